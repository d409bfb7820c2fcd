//! Behaviour: a replica is subscribed to a room's Redis channel exactly while it has local
//! members, whether they leave, disconnect, or churn concurrently.

mod common;

use common::*;

fn channel(room: &str) -> String {
    format!("roomcast:{{{room}}}:ch")
}

async fn two_replicas() -> (RedisServer, Node, Node) {
    let redis = RedisServer::start().await;
    let a = Node::start(node_config(Some(&redis), "node-a")).await;
    let b = Node::start(node_config(Some(&redis), "node-b")).await;
    (redis, a, b)
}

/// Proves `node_a` still receives the room: a message from a member on the other replica
/// reaches `member` (on `node_a`).
async fn message_from_other_replica_reaches(other: &Node, member: &mut Client, room: &str) {
    let mut speaker = other.client().await;
    speaker.join(room, "speaker").await;
    let ack = speaker.send(room, "are you there?").await;
    let m = member.next_message().await;
    assert_eq!(
        (id_of(&m), text_of(&m)),
        (id_of(&ack), "are you there?".into())
    );
    speaker.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_unsubscribes_after_last_member_leaves() {
    let (redis, node_a, node_b) = two_replicas().await;
    let room = "leavers";
    let mut first = node_a.client().await;
    first.join(room, "first").await;
    let mut second = node_a.client().await;
    second.join(room, "second").await;
    redis.wait_numsub(&channel(room), 1).await;

    first.leave(room).await;
    // One member is left on node_a: it stays subscribed and still receives the room.
    message_from_other_replica_reaches(&node_b, &mut second, room).await;
    redis.wait_numsub(&channel(room), 1).await;

    second.leave(room).await;
    redis.wait_numsub(&channel(room), 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_unsubscribes_after_last_member_disconnects() {
    let (redis, node_a, node_b) = two_replicas().await;
    let room = "quitters";
    let mut first = node_a.client().await;
    first.join(room, "first").await;
    let mut second = node_a.client().await;
    second.join(room, "second").await;
    redis.wait_numsub(&channel(room), 1).await;

    first.close().await;
    message_from_other_replica_reaches(&node_b, &mut second, room).await;
    redis.wait_numsub(&channel(room), 1).await;

    drop(second); // abrupt disconnect
    redis.wait_numsub(&channel(room), 0).await;
}

/// `tasks` connections on `node` join and leave `room` `rounds` times concurrently; the
/// first `stay` of them end joined. Returns those still joined.
async fn churn(
    node: &Node,
    room: &'static str,
    tasks: usize,
    rounds: usize,
    stay: usize,
) -> Vec<Client> {
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let url = node.ws_url.clone();
            tokio::spawn(async move {
                let mut client = Client::connect(&url).await;
                let name = format!("churn{t}");
                for _ in 0..rounds {
                    client.join(room, &name).await;
                    client.leave(room).await;
                }
                if t < stay {
                    client.join(room, &name).await;
                    Some(client)
                } else {
                    None
                }
            })
        })
        .collect();
    let mut remaining = Vec::new();
    for h in handles {
        if let Some(client) = h.await.expect("churn task") {
            remaining.push(client);
        }
    }
    remaining
}

#[tokio::test(flavor = "multi_thread")]
async fn join_leave_churn_with_a_member_remaining_stays_subscribed() {
    let (redis, node_a, node_b) = two_replicas().await;
    let room = "churn-stay";
    let mut remaining = churn(&node_a, room, 16, 15, 1).await;
    assert_eq!(remaining.len(), 1);
    redis.wait_numsub(&channel(room), 1).await;
    let mut last = remaining.pop().expect("the remaining member");
    last.discard_pending();
    message_from_other_replica_reaches(&node_b, &mut last, room).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn join_leave_churn_ending_empty_unsubscribes() {
    let (redis, node_a, _node_b) = two_replicas().await;
    let room = "churn-empty";
    let remaining = churn(&node_a, room, 16, 15, 0).await;
    assert!(remaining.is_empty());
    redis.wait_numsub(&channel(room), 0).await;
}
