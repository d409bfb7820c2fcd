//! Behaviour: every member of a room, on every replica, receives each message exactly once and
//! in one order; a client that stops reading is cut off without slowing the room; heartbeats
//! close dead connections and keep live ones.

#[macro_use]
mod common;

use common::*;
use std::collections::HashSet;

/// Six members spread over the replicas each send one message: every member, the sender
/// included, gets every message exactly once (with an ack for the sender), in send order.
async fn message_reaches_every_member_exactly_once(c: &Cluster) {
    let room = "lobby";
    let mut members = Vec::new();
    for i in 0..6 {
        let mut client = c.client(i).await;
        client.join(room, &format!("user{i}")).await;
        members.push(client);
    }
    let mut expected = Vec::new();
    for (i, member) in members.iter_mut().enumerate() {
        let text = format!("hello from user{i}");
        let ack = member.send(room, &text).await;
        expected.push((id_of(&ack), text, format!("user{i}")));
    }
    let end = members[5].send(room, "end").await;
    expected.push((id_of(&end), "end".to_string(), "user5".to_string()));

    for member in members.iter_mut() {
        let got = member.messages_until("end").await;
        let got: Vec<(String, String, String)> = got
            .iter()
            .map(|m| {
                assert_eq!(m["room"], room, "message for another room: {m}");
                assert!(m["ts"].is_u64(), "message without ts: {m}");
                assert!(m["from"]["color"].is_string(), "message without color: {m}");
                let from = m["from"]["name"].as_str().expect("from.name").to_string();
                (id_of(m), text_of(m), from)
            })
            .collect();
        assert_eq!(
            got, expected,
            "a member saw a different set or order of messages"
        );
    }
}
on_both_buses!(message_reaches_every_member_exactly_once, 3);

/// Six senders on different replicas blast concurrently: every member sees the identical,
/// strictly increasing id sequence, holding exactly the acknowledged messages.
async fn concurrent_senders_are_seen_in_one_order(c: &Cluster) {
    const PER_SENDER: usize = 40;
    let room = "race";
    let mut listeners = Vec::new();
    for i in 0..3 {
        let mut client = c.client(i).await;
        client.join(room, &format!("listener{i}")).await;
        listeners.push(client);
    }
    let mut senders = Vec::new();
    for i in 0..6 {
        let mut client = c.client(i).await;
        client.join(room, &format!("sender{i}")).await;
        senders.push(client);
    }

    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut sender)| {
            tokio::spawn(async move {
                let texts: Vec<String> = (0..PER_SENDER).map(|k| format!("s{i}-{k}")).collect();
                let ids = sender.send_many(room, &texts).await;
                (sender, ids)
            })
        })
        .collect();
    let mut senders = Vec::new();
    let mut acked = HashSet::new();
    for task in tasks {
        let (sender, ids) = task.await.expect("sender task");
        acked.extend(ids);
        senders.push(sender);
    }
    let end = senders[0].send(room, "end").await;
    acked.insert(id_of(&end));

    let mut sequences = Vec::new();
    for member in listeners.iter_mut().chain(senders.iter_mut()) {
        let ids: Vec<String> = member
            .messages_until("end")
            .await
            .iter()
            .map(id_of)
            .collect();
        assert_strictly_increasing(&ids);
        let distinct: HashSet<String> = ids.iter().cloned().collect();
        assert_eq!(
            distinct, acked,
            "a member did not get exactly the acked messages"
        );
        assert_eq!(ids.len(), acked.len(), "a member got a message twice");
        sequences.push(ids);
    }
    for seq in &sequences[1..] {
        assert_eq!(seq, &sequences[0], "two members saw different orders");
    }
}
on_both_buses!(concurrent_senders_are_seen_in_one_order, 3);

fn small_outbound_queue(cfg: &mut roomcast::Config) {
    cfg.limits.outbound_queue = 32;
    cfg.limits.max_text_bytes = 32 * 1024;
    cfg.limits.max_frame_bytes = 64 * 1024;
}

/// A member that never reads while others flood the room is disconnected (1008 "slow
/// consumer", or the connection just ends); a normal member still gets every message.
async fn slow_consumer_is_cut_off_while_room_keeps_flowing(c: &Cluster) {
    // The flooder reads its acks and own messages only between batches: a batch must fit
    // its own outbound queue, or it would be cut off as a slow consumer too.
    const BATCH: usize = 4;
    const MAX_BATCHES: usize = 300;
    let room = "firehose";
    let mut slow = Client::connect_with_recv_buffer(&c.node(0).ws_url, 4096).await;
    slow.join(room, "sleepy").await;
    let mut normal = c.client(1).await;
    normal.join(room, "reader").await;
    let mut flooder = c.client(0).await;
    flooder.join(room, "flooder").await;

    let reader = tokio::spawn(async move {
        let ids: Vec<String> = normal
            .messages_until("end")
            .await
            .iter()
            .map(id_of)
            .collect();
        ids
    });

    let big = "x".repeat(30 * 1024);
    let mut sent = Vec::new();
    for batch in 0..MAX_BATCHES {
        let texts: Vec<String> = (0..BATCH).map(|k| format!("{batch}-{k} {big}")).collect();
        sent.extend(flooder.send_many(room, &texts).await);
        flooder.discard_pending();
        let cut = metric_value(
            &c.node(0).admin_url,
            "roomcast_disconnects_total",
            &[("reason", "slow_consumer")],
        )
        .await;
        if cut >= 1.0 {
            break;
        }
    }
    sent.push(id_of(&flooder.send(room, "end").await));

    let received = reader.await.expect("reader task");
    assert_eq!(
        received, sent,
        "the normal member missed or reordered messages"
    );

    let closed = slow.wait_closed(FRAME_TIMEOUT).await;
    let got = closed
        .skipped
        .iter()
        .filter(|v| v["type"] == "message")
        .count();
    assert!(
        got < sent.len(),
        "the slow consumer was never cut off: it got all {got} messages"
    );
    if let Some((code, reason)) = closed.close {
        assert_eq!((code, reason.as_str()), (1008, "slow consumer"));
    }
}
on_both_buses!(
    slow_consumer_is_cut_off_while_room_keeps_flowing,
    2,
    small_outbound_queue
);

fn fast_heartbeat(cfg: &mut roomcast::Config) {
    cfg.heartbeat.interval = Duration::from_millis(200);
    cfg.heartbeat.timeout = Duration::from_secs(1);
}

/// A client that never answers pings (and sends nothing) gets pings, then is closed with
/// 1008 "heartbeat timeout".
#[tokio::test(flavor = "multi_thread")]
async fn silent_client_is_closed_for_heartbeat_timeout() {
    let c = Cluster::start(Bus::Memory, 1, fast_heartbeat).await;
    let mut dead = RawWs::connect(&c.node(0).ws_url).await;
    let mut pings = 0;
    let close = loop {
        match dead.read_frame(Duration::from_secs(30)).await {
            Some((opcode::PING, _)) => pings += 1,
            Some((opcode::CLOSE, payload)) => break payload,
            Some(_) => {}
            None => panic!("connection ended without a close frame after {pings} pings"),
        }
    };
    assert!(pings >= 1, "the server sent no ping before closing");
    assert!(close.len() >= 2, "close frame without a code");
    let code = u16::from_be_bytes([close[0], close[1]]);
    let reason = String::from_utf8_lossy(&close[2..]).to_string();
    assert_eq!((code, reason.as_str()), (1008, "heartbeat timeout"));
}

/// A client that answers pings stays connected well past the heartbeat timeout and can
/// still chat.
#[tokio::test(flavor = "multi_thread")]
async fn client_answering_pings_stays_connected() {
    let c = Cluster::start(Bus::Memory, 1, fast_heartbeat).await;
    let mut alive = c.client(0).await;
    alive.join("beat", "alive").await;
    // 12 pings at a 200 ms interval span well over the 1 s timeout.
    alive.count_pings(12).await;
    let ack = alive.send("beat", "still here").await;
    let m = alive.next_message().await;
    assert_eq!(
        (id_of(&m), text_of(&m)),
        (id_of(&ack), "still here".to_string())
    );
}
