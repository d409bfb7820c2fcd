//! Behaviour: who is in a room is known on every replica: `joined.members` lists members on
//! other replicas, join/leave/disconnect are announced to the others, and the members of a
//! replica that crashed are announced as left once its presence expires.

#[macro_use]
mod common;

use common::*;

fn names(joined: &Value) -> Vec<String> {
    let mut names: Vec<String> = joined["members"]
        .as_array()
        .unwrap_or_else(|| panic!("joined without members: {joined}"))
        .iter()
        .map(|m| m["name"].as_str().expect("member name").to_string())
        .collect();
    names.sort();
    names
}

fn assert_presence(frame: &Value, room: &str, event: &str, name: &str) {
    assert_eq!(frame["type"], "presence", "expected presence, got {frame}");
    assert_eq!(frame["room"], room, "{frame}");
    assert_eq!(frame["event"], event, "{frame}");
    assert_eq!(frame["user"]["name"], name, "{frame}");
}

/// `joined.members` lists every member on every replica, the joiner included, with the
/// same color for a name everywhere.
async fn joined_lists_members_on_every_replica(c: &Cluster) {
    let room = "roll-call";
    let mut alice = c.client(0).await;
    let ja = alice.join(room, "alice").await;
    assert_eq!(names(&ja), ["alice"]);
    assert_eq!(ja["you"]["name"], "alice");
    assert_eq!(ja["offset"], "0-0", "a fresh room has offset 0-0: {ja}");
    assert!(
        ja.get("recovered").is_none(),
        "recovered without since: {ja}"
    );
    let color = ja["you"]["color"].as_str().expect("color").to_string();
    assert!(
        color.len() == 7
            && color.starts_with('#')
            && color[1..].chars().all(|ch| ch.is_ascii_hexdigit()),
        "color is not #rrggbb: {color}"
    );

    let mut bob = c.client(1).await;
    let jb = bob.join(room, "bob").await;
    assert_eq!(names(&jb), ["alice", "bob"]);
    let alice_there = jb["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["name"] == "alice")
        .expect("alice listed");
    assert_eq!(
        alice_there["color"],
        color.as_str(),
        "alice's color differs across replicas"
    );

    let mut carol = c.client(2).await;
    let jc = carol.join(room, "carol").await;
    assert_eq!(names(&jc), ["alice", "bob", "carol"]);
}
on_both_buses!(joined_lists_members_on_every_replica, 3);

/// Joins and leaves are announced to the members on the other replicas, not to the actor.
async fn join_and_leave_are_announced_across_replicas(c: &Cluster) {
    let room = "announcements";
    let mut alice = c.client(0).await;
    alice.join(room, "alice").await;
    let mut bob = c.client(1).await;
    let jb = bob.join(room, "bob").await;

    let p = alice.expect("presence").await;
    assert_presence(&p, room, "join", "bob");
    assert_eq!(p["user"]["color"], jb["you"]["color"]);

    let mut carol = c.client(2).await;
    carol.join(room, "carol").await;
    assert_presence(&alice.expect("presence").await, room, "join", "carol");
    assert_presence(&bob.expect("presence").await, room, "join", "carol");

    bob.leave(room).await;
    assert_presence(&alice.expect("presence").await, room, "leave", "bob");
    assert_presence(&carol.expect("presence").await, room, "leave", "bob");

    // The actor hears nothing about itself; a message is the next thing everyone sees.
    alice.send(room, "after").await;
    assert_eq!(text_of(&alice.expect("message").await), "after");
    assert_eq!(text_of(&carol.expect("message").await), "after");
    bob.assert_silent(Duration::from_millis(300)).await;
}
on_both_buses!(join_and_leave_are_announced_across_replicas, 3);

/// Closing the connection (or just dropping it) announces a leave to the other replicas.
async fn disconnect_announces_leave(c: &Cluster) {
    let room = "exits";
    let mut alice = c.client(0).await;
    alice.join(room, "alice").await;
    let mut bob = c.client(1).await;
    bob.join(room, "bob").await;
    let mut carol = c.client(2).await;
    carol.join(room, "carol").await;
    assert_presence(&alice.expect("presence").await, room, "join", "bob");
    assert_presence(&alice.expect("presence").await, room, "join", "carol");

    bob.close().await;
    assert_presence(&alice.expect("presence").await, room, "leave", "bob");

    drop(carol); // abrupt: no close frame
    assert_presence(&alice.expect("presence").await, room, "leave", "carol");

    let mut dave = c.client(1).await;
    assert_eq!(names(&dave.join(room, "dave").await), ["alice", "dave"]);
}
on_both_buses!(disconnect_announces_leave, 3);

/// A replica killed with SIGKILL cannot say goodbye: its members are announced as left once
/// its presence expires, and are no longer listed to new joiners.
#[tokio::test(flavor = "multi_thread")]
async fn crashed_replica_members_expire() {
    let redis = RedisServer::start().await;
    let survivor = Node::start(node_config(Some(&redis), "survivor")).await;
    let mut doomed = ProcessNode::start(
        Some(&redis),
        "doomed",
        &[
            ("ROOMCAST_PRESENCE__TTL", "2s"),
            ("ROOMCAST_PRESENCE__REFRESH", "300ms"),
        ],
    )
    .await;
    let room = "mortality";
    let mut watcher = survivor.client().await;
    watcher.join(room, "watcher").await;
    let mut victim = doomed.client().await;
    let jv = victim.join(room, "victim").await;
    assert_eq!(names(&jv), ["victim", "watcher"]);
    assert_presence(&watcher.expect("presence").await, room, "join", "victim");

    doomed.kill().await;

    // Expiry takes presence.ttl + presence.refresh (2.3 s here): wait generously.
    let p = match watcher.read_incoming(Duration::from_secs(30)).await {
        Some(Incoming::Json(v)) => v,
        other => panic!("watcher: no presence leave for the crashed replica's member: {other:?}"),
    };
    assert_presence(&p, room, "leave", "victim");

    let mut late = survivor.client().await;
    assert_eq!(names(&late.join(room, "late").await), ["late", "watcher"]);
    drop(victim);
}
