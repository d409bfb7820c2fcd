//! Behaviour: recent history on join (`join` with `history`), typing indicators
//! (`typing`), and idempotent client sends (`send` with `idem`), on both buses and across
//! replicas.

#[macro_use]
mod common;

use common::*;

/// `join` with `"history": N` replays the room's last N messages (flagged `replay`) after
/// `joined`, then live messages (not flagged), without gap or duplicate.
async fn join_with_history_shows_the_last_n_then_live(c: &Cluster) {
    let room = "recent";
    let mut writer = c.client(1).await;
    writer.join(room, "writer").await;
    let mut sent = Vec::new();
    for k in 1..=5 {
        sent.push(id_of(&writer.send(room, &format!("m{k}")).await));
    }

    let mut reader = c.client(0).await;
    let joined = reader
        .try_join_frame(json!({"room": room, "name": "reader", "history": 3}))
        .await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["offset"], sent[4].as_str(), "{joined}");
    assert!(joined.get("recovered").is_none(), "no `since`: {joined}");
    let replay = [
        reader.expect("message").await,
        reader.expect("message").await,
        reader.expect("message").await,
    ];
    assert_eq!(
        replay.iter().map(text_of).collect::<Vec<_>>(),
        ["m3", "m4", "m5"]
    );
    assert_eq!(replay.iter().map(id_of).collect::<Vec<_>>(), sent[2..]);
    assert!(replay.iter().all(|m| m["replay"] == true), "{replay:?}");

    let live = writer.send(room, "m6").await;
    let m6 = reader.next_of_type("message").await;
    assert_eq!((id_of(&m6), text_of(&m6)), (id_of(&live), "m6".to_string()));
    assert!(
        m6.get("replay").is_none(),
        "live messages are not flagged: {m6}"
    );
    reader.assert_silent(Duration::from_millis(300)).await;

    // Without `history` (or with 0) a join replays nothing.
    let mut plain = c.client(1).await;
    plain
        .try_join_frame(json!({"room": room, "name": "plain", "history": 0}))
        .await;
    let m7 = writer.send(room, "m7").await;
    let first = plain.next_of_type("message").await;
    assert_eq!(id_of(&first), id_of(&m7), "only the live message: {first}");
}
on_both_buses!(join_with_history_shows_the_last_n_then_live, 2);

/// More history than the room keeps gives what it keeps (`history.size`), and a join
/// while messages keep coming sees each message exactly once, in order.
async fn join_with_history_during_sends_has_no_gap_or_duplicate(c: &Cluster) {
    let room = "busy";
    let mut writer = c.client(0).await;
    writer.join(room, "writer").await;
    for k in 0..10 {
        writer.send(room, &format!("before-{k}")).await;
    }
    let writer_task = tokio::spawn(async move {
        let texts: Vec<String> = (0..40).map(|k| format!("during-{k}")).collect();
        let ids = writer.send_many(room, &texts).await;
        (writer, ids)
    });
    let mut reader = c.client(1).await;
    let joined = reader
        .try_join_frame(json!({"room": room, "name": "reader", "history": 1000}))
        .await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let (_writer, during_ids) = writer_task.await.expect("writer");
    assert_eq!(during_ids.len(), 40);
    let seen = reader.messages_until("during-39").await;
    let ids: Vec<String> = seen.iter().map(id_of).collect();
    assert_strictly_increasing(&ids);
    let texts: Vec<String> = seen.iter().map(text_of).collect();
    // history.size is 5 in this test's configuration: at most 5 from before the join,
    // then every later message once.
    let replayed = seen.iter().filter(|m| m["replay"] == true).count();
    assert!(replayed <= 5, "history.size caps the replay: {replayed}");
    for k in 0..40 {
        let text = format!("during-{k}");
        let n = texts.iter().filter(|t| **t == text).count();
        // Messages sent before the join was answered may be in the replay (if among the
        // last 5) or missing from it (older); those after it arrive live, exactly once.
        assert!(n <= 1, "{text} seen {n} times");
    }
    let first_during = texts
        .iter()
        .position(|t| t.starts_with("during-"))
        .expect("some during message");
    let k0: usize = texts[first_during]["during-".len()..].parse().expect("k");
    let expected: Vec<String> = (k0..40).map(|k| format!("during-{k}")).collect();
    assert_eq!(
        texts[first_during..],
        expected,
        "no gap after the first seen"
    );
}
on_both_buses!(
    join_with_history_during_sends_has_no_gap_or_duplicate,
    2,
    |cfg: &mut roomcast::Config| cfg.history.size = 5
);

/// `typing` reaches the room's other members on every replica as `typing` with the user,
/// never the sender, never history, and at most once per user per second.
async fn typing_reaches_others_not_the_sender_and_is_throttled(c: &Cluster) {
    let room = "typing";
    let mut alice = c.client(0).await;
    alice.join(room, "alice").await;
    let mut bob = c.client(1).await;
    bob.join(room, "bob").await;
    alice.wait_presence(room, "join", "bob").await;

    for _ in 0..5 {
        alice
            .send_json(json!({"type": "typing", "room": room}))
            .await;
    }
    let typing = bob.next_json().await;
    assert_eq!(typing["type"], "typing", "{typing}");
    assert_eq!(typing["room"], room);
    assert_eq!(typing["user"]["name"], "alice");
    bob.assert_silent(Duration::from_millis(400)).await;
    alice.assert_silent(Duration::from_millis(100)).await;

    // A second later another one passes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    alice
        .send_json(json!({"type": "typing", "room": room}))
        .await;
    let again = bob.next_json().await;
    assert_eq!(again["type"], "typing", "{again}");

    // Never stored: a later joiner's history has only the real message.
    alice.send(room, "hello").await;
    let mut carol = c.client(1).await;
    carol
        .try_join_frame(json!({"room": room, "name": "carol", "history": 50}))
        .await;
    let replay = carol.next_json().await;
    assert_eq!(
        (replay["type"].as_str(), text_of(&replay)),
        (Some("message"), "hello".into())
    );
    carol.assert_silent(Duration::from_millis(200)).await;

    // Typing in a room one has not joined is refused.
    alice
        .send_json(json!({"type": "typing", "room": "elsewhere", "ref": "t1"}))
        .await;
    let error = alice.next_of_type("error").await;
    assert_eq!(
        (error["code"].as_str(), error["ref"].as_str()),
        (Some("not_joined"), Some("t1"))
    );
}
on_both_buses!(typing_reaches_others_not_the_sender_and_is_throttled, 2);

/// A `send` retried with the same `idem` after a reconnect to another replica is acked
/// with the first id (`duplicate`) and publishes nothing; another key publishes.
async fn idem_retry_after_a_reconnect_acks_once(c: &Cluster) {
    let room = "idem";
    let mut watcher = c.client(0).await;
    watcher.join(room, "watcher").await;

    let mut sender = c.client(0).await;
    sender.join(room, "sam").await;
    let send = |idem: &str, r: &str| json!({"type": "send", "room": room, "text": "once", "idem": idem, "ref": r});
    let send_as_olga =
        json!({"type": "send", "room": room, "text": "olga", "idem": "k-1", "ref": "o1"});
    sender.send_json(send("k-1", "s1")).await;
    let first = sender.next_of_type("ack").await;
    assert!(first.get("duplicate").is_none(), "{first}");
    // The connection is lost before the client trusts the ack; it reconnects elsewhere.
    sender.close().await;

    let mut sender = c.client(1).await;
    sender.join(room, "sam").await;
    sender.send_json(send("k-1", "s2")).await;
    let retry = sender.next_of_type("ack").await;
    assert_eq!(retry["ref"], "s2");
    assert_eq!(retry["id"], first["id"], "the first id: {retry}");
    assert_eq!(retry["duplicate"], true);

    // Another user with the same key is another message (keys are per sender).
    let mut other = c.client(1).await;
    other.join(room, "olga").await;
    other.send_json(send_as_olga).await;
    let olga = other.next_of_type("ack").await;
    assert_ne!(olga["id"], first["id"]);
    assert!(olga.get("duplicate").is_none());

    let got = watcher.messages_until("olga").await;
    let once: Vec<&Value> = got.iter().filter(|m| text_of(m) == "once").collect();
    assert_eq!(once.len(), 1, "published once: {got:?}");
    assert_eq!(once[0]["id"], first["id"]);
}
on_both_buses!(idem_retry_after_a_reconnect_acks_once, 2);

/// The same key sent at once through two replicas publishes once; both acks carry the
/// same id.
async fn concurrent_idem_sends_on_two_replicas_publish_once(c: &Cluster) {
    let room = "idem-race";
    let mut watcher = c.client(0).await;
    watcher.join(room, "watcher").await;
    let mut a = c.client(0).await;
    a.join(room, "sam").await;
    let mut b = c.client(1).await;
    b.join(room, "sam").await;
    for round in 0..10 {
        let key = format!("race-{round}");
        let frame = json!({"type": "send", "room": room, "text": key, "idem": key});
        let (ra, rb) = tokio::join!(a.send_json(frame.clone()), b.send_json(frame.clone()));
        let _ = (ra, rb);
        let ack_a = a.next_of_type("ack").await;
        let ack_b = b.next_of_type("ack").await;
        assert_eq!(ack_a["id"], ack_b["id"], "round {round}");
        let duplicates = [&ack_a, &ack_b]
            .iter()
            .filter(|ack| ack["duplicate"] == true)
            .count();
        assert_eq!(duplicates, 1, "exactly one was the first: {ack_a} {ack_b}");
    }
    a.send(room, "end").await;
    let got = watcher.messages_until("end").await;
    assert_eq!(
        got.len(),
        11,
        "ten keys, one message each, then end: {got:?}"
    );
}
on_both_buses!(concurrent_idem_sends_on_two_replicas_publish_once, 2);

/// An `idem` key over 64 bytes is refused with `bad_request` and nothing is published.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_idem_key_is_refused() {
    let c = Cluster::start(Bus::Memory, 1, defaults).await;
    let mut client = c.client(0).await;
    client.join("a", "x").await;
    client
        .send_json(
            json!({"type": "send", "room": "a", "text": "t", "idem": "k".repeat(65), "ref": "r"}),
        )
        .await;
    let error = client.expect("error").await;
    assert_eq!(
        (error["code"].as_str(), error["ref"].as_str()),
        (Some("bad_request"), Some("r"))
    );
    client.assert_silent(Duration::from_millis(200)).await;
}

/// `ping` is answered by `pong` at once, echoing its `ref`, joined to a room or not; it
/// is answered on its own (no other frame), so a client can tell a live connection.
#[tokio::test(flavor = "multi_thread")]
async fn ping_is_answered_by_pong_with_its_ref() {
    let c = Cluster::start(Bus::Memory, 1, defaults).await;
    let mut client = c.client(0).await;
    client.send_json(json!({"type": "ping", "ref": "p1"})).await;
    let pong = client.expect("pong").await;
    assert_eq!(pong, json!({"type": "pong", "ref": "p1"}));
    client.join("a", "x").await;
    client.send_json(json!({"type": "ping"})).await;
    assert_eq!(client.expect("pong").await, json!({"type": "pong"}));
    client.assert_silent(Duration::from_millis(200)).await;
}
