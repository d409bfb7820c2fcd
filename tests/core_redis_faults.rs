//! Behaviour: the Redis bus survives Redis restarting (empty) under live sessions: delivery
//! resumes across replicas, and a resume from before the restart reports the loss.

mod common;

use common::*;

const ROOM: &str = "weather";

async fn alice_and_bob(c: &Cluster) -> (Client, Client) {
    let mut alice = c.client(0).await;
    alice.join(ROOM, "alice").await;
    let mut bob = c.client(1).await;
    bob.join(ROOM, "bob").await;
    alice.wait_presence(ROOM, "join", "bob").await;
    (alice, bob)
}

/// Members on two replicas keep their connections through a Redis restart and chat again
/// once it is back (sends refused as `unavailable` meanwhile are retried).
#[tokio::test(flavor = "multi_thread")]
async fn delivery_continues_after_redis_restart() {
    let mut c = Cluster::start(Bus::Redis, 2, defaults).await;
    let (mut alice, mut bob) = alice_and_bob(&c).await;
    let ack = alice.send(ROOM, "before").await;
    assert_eq!(id_of(&bob.next_message().await), id_of(&ack));

    c.redis_mut().restart().await;

    chat_restored(&mut alice, &mut bob, ROOM).await;
    // And a newcomer on either replica joins and hears the room.
    let mut carol = c.client(1).await;
    carol.join(ROOM, "carol").await;
    let ack = alice.send(ROOM, "welcome carol").await;
    let m = carol.next_message().await;
    assert_eq!(
        (id_of(&m), text_of(&m)),
        (id_of(&ack), "welcome carol".to_string())
    );
}

/// Redis restarted empty: the room's log is gone, so resuming from an id of before the
/// restart says `recovered: false`, then delivers what is left and live messages.
#[tokio::test(flavor = "multi_thread")]
async fn resume_from_before_redis_restart_is_not_recovered() {
    let mut c = Cluster::start(Bus::Redis, 2, defaults).await;
    let (mut alice, mut bob) = alice_and_bob(&c).await;
    bob.send(ROOM, "before").await;
    let cursor = id_of(&alice.next_message().await);

    c.redis_mut().restart().await;
    chat_restored(&mut bob, &mut alice, ROOM).await;
    alice.close().await;

    let mut alice = c.client(1).await;
    let joined = alice.join_since(ROOM, "alice", &cursor).await;
    assert_eq!(
        joined["recovered"], false,
        "the log was lost with Redis: {joined}"
    );
    let live = bob.send(ROOM, "after").await;
    let m = alice.messages_until("after").await;
    assert_eq!(id_of(m.last().expect("a message")), id_of(&live));
    assert!(
        m.iter().all(|m| m["text"] != "before"),
        "a message from before the restart came back: {m:?}"
    );
}
