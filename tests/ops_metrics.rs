//! Behaviour: `/metrics` on the admin port is valid Prometheus text (and is not served on the
//! client port); every metric that docs/operations.md lists exists with its documented type,
//! and moves when its event happens (connect, join, send across replicas, error, each
//! disconnect reason, leave, bus up/down, refused connections); the per-room label is capped.

mod common;
mod ops_common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use ops_common::*;

/// Each metric of the table in docs/operations.md: (name, labels, type).
fn documented_metrics() -> Vec<(String, Vec<String>, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md");
    let doc = std::fs::read_to_string(path).expect("read docs/operations.md");
    let metrics: Vec<_> = doc
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("| `roomcast_")?;
            let (series, rest) = rest.split_once('`')?;
            let kind = rest.trim_start_matches(" |").split('|').next()?.trim();
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (
                    n.to_string(),
                    l.trim_end_matches('}')
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .collect(),
                ),
                None => (series.to_string(), Vec::new()),
            };
            Some((format!("roomcast_{name}"), labels, kind.to_string()))
        })
        .collect();
    assert!(
        metrics.len() >= 17,
        "expected the metrics table in {path}, found {metrics:?}"
    );
    metrics
}

/// The admin port serves `/metrics` as strictly valid Prometheus text; the client port does
/// not serve it at all (404).
#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_prometheus_text_on_the_admin_port_and_absent_on_the_client_port() {
    let c = Cluster::start(Bus::Memory, 1, defaults).await;
    let node = c.node(0);
    let (status, body) = http_get(&format!("{}/metrics", node.admin_url))
        .await
        .expect("GET admin /metrics");
    assert_eq!(status, 200, "{body}");
    let exposition = Exposition::parse(&body)
        .unwrap_or_else(|e| panic!("admin /metrics is not Prometheus text: {e}\n{body}"));
    assert!(
        exposition
            .families
            .iter()
            .any(|f| f.name.starts_with("roomcast_") && f.help.is_some() && f.kind != "untyped"),
        "no typed roomcast_ family with HELP: {body}"
    );

    let (status, body) = http_get(&format!("{}/metrics", node.http_url))
        .await
        .expect("GET client /metrics");
    assert_eq!(
        status, 404,
        "the client port must not serve /metrics: {body}"
    );
}

/// Every metric the operations doc lists is exported with its documented type and labels
/// (after one message, so that the per-room counter has a series).
#[tokio::test(flavor = "multi_thread")]
async fn every_documented_metric_exists_with_its_type() {
    let c = Cluster::start(Bus::Redis, 1, defaults).await;
    let node = c.node(0);
    let mut alice = node.client().await;
    alice.join("docs", "alice").await;
    let ack = alice.send("docs", "hello").await;
    assert_eq!(id_of(&alice.next_message().await), id_of(&ack));
    wait_metric(
        &node.admin_url,
        "roomcast_room_messages_total",
        &[("room", "docs")],
        "1",
        |v| v == 1.0,
    )
    .await;

    let exposition = scrape(&node.admin_url).await;
    for (name, labels, kind) in documented_metrics() {
        let family = exposition
            .family(&name)
            .unwrap_or_else(|| panic!("documented metric {name} is not exported"));
        assert_eq!(family.kind, kind, "{name} has the wrong TYPE");
        assert!(family.help.is_some(), "{name} has no HELP");
        assert!(!family.samples.is_empty(), "{name} has no sample");
        for sample in &family.samples {
            let mut have: BTreeSet<&str> = sample.labels.keys().map(String::as_str).collect();
            have.remove("le");
            let want: BTreeSet<&str> = labels.iter().map(String::as_str).collect();
            assert_eq!(have, want, "{name}: labels of {sample:?}");
        }
    }
}

/// A WebSocket upgrade counts as an accepted connection and raises the open-connections
/// gauge; closing lowers it again.
#[tokio::test(flavor = "multi_thread")]
async fn connect_counts_an_accepted_connection_and_an_open_one() {
    let c = Cluster::start(Bus::Memory, 1, defaults).await;
    let admin = &c.node(0).admin_url;
    let accepted = [("result", "accepted")];
    assert_eq!(metric(admin, "roomcast_connections", &[]).await, 0.0);
    let before = metric(admin, "roomcast_connections_total", &accepted).await;

    let alice = c.client(0).await;
    let bob = c.client(0).await;
    wait_metric(admin, "roomcast_connections", &[], "2 open", |v| v == 2.0).await;
    assert_eq!(
        metric(admin, "roomcast_connections_total", &accepted).await,
        before + 2.0
    );
    alice.close().await;
    wait_metric(admin, "roomcast_connections", &[], "1 open", |v| v == 1.0).await;
    bob.close().await;
    wait_metric(admin, "roomcast_connections", &[], "0 open", |v| v == 0.0).await;
    assert_eq!(
        metric(
            admin,
            "roomcast_connections_total",
            &[("result", "rejected")]
        )
        .await,
        0.0
    );
}

/// Joins count in `roomcast_joins_total`; `roomcast_rooms` counts rooms with local members;
/// leaves (explicit, and by disconnect) count in `roomcast_leaves_total` and empty rooms go.
#[tokio::test(flavor = "multi_thread")]
async fn joins_and_leaves_move_joins_rooms_and_leaves() {
    let c = Cluster::start(Bus::Memory, 1, defaults).await;
    let admin = &c.node(0).admin_url;
    assert_eq!(metric(admin, "roomcast_rooms", &[]).await, 0.0);
    let mut alice = c.client(0).await;
    let mut bob = c.client(0).await;
    alice.join("red", "alice").await;
    wait_metric(admin, "roomcast_joins_total", &[], "1 join", |v| v == 1.0).await;
    assert_eq!(metric(admin, "roomcast_rooms", &[]).await, 1.0);
    bob.join("red", "bob").await;
    bob.join("blue", "bob").await;
    wait_metric(admin, "roomcast_joins_total", &[], "3 joins", |v| v == 3.0).await;
    assert_eq!(metric(admin, "roomcast_rooms", &[]).await, 2.0);
    // A refused join is not a join.
    let again = alice.try_join("red", "alice").await;
    assert_eq!(again["code"], "already_joined", "{again}");
    assert_eq!(metric(admin, "roomcast_joins_total", &[]).await, 3.0);
    assert_eq!(metric(admin, "roomcast_leaves_total", &[]).await, 0.0);

    bob.leave("blue").await;
    wait_metric(admin, "roomcast_leaves_total", &[], "1 leave", |v| v == 1.0).await;
    wait_metric(admin, "roomcast_rooms", &[], "1 room", |v| v == 1.0).await;
    alice.leave("red").await;
    wait_metric(admin, "roomcast_leaves_total", &[], "2 leaves", |v| {
        v == 2.0
    })
    .await;
    assert_eq!(
        metric(admin, "roomcast_rooms", &[]).await,
        1.0,
        "bob is still in red"
    );
    // Leaving by disconnecting counts too.
    bob.close().await;
    wait_metric(admin, "roomcast_leaves_total", &[], "3 leaves", |v| {
        v == 3.0
    })
    .await;
    wait_metric(admin, "roomcast_rooms", &[], "no room", |v| v == 0.0).await;
}

/// Snapshot of the message-path metrics of one node.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Flow {
    received: f64,
    published: f64,
    bus_received: f64,
    delivered: f64,
    latency_count: f64,
    room: f64,
}

async fn flow(admin: &str, room: &str) -> Flow {
    let e = scrape(admin).await;
    let v = |name: &str, labels: &[(&str, &str)]| e.value(name, labels).unwrap_or(0.0);
    Flow {
        received: v("roomcast_messages_received_total", &[]),
        published: v("roomcast_messages_published_total", &[]),
        bus_received: v("roomcast_bus_messages_received_total", &[]),
        delivered: v("roomcast_messages_delivered_total", &[]),
        latency_count: v("roomcast_delivery_latency_seconds_count", &[]),
        room: v("roomcast_room_messages_total", &[("room", room)]),
    }
}

async fn wait_flow(admin: &str, room: &str, what: &str, pred: impl Fn(&Flow) -> bool) -> Flow {
    eventually(METRIC_TIMEOUT, || async {
        let f = flow(admin, room).await;
        if pred(&f) {
            Ok(f)
        } else {
            Err(format!(
                "{admin}: message metrics never showed {what}; last {f:?}"
            ))
        }
    })
    .await
}

/// Messages sent on replica 0 to a member on replica 1 (Redis bus): the sender's node counts
/// them received and published, the other node counts them from the bus, delivered, with a
/// latency sample each, under the room's label; the other node publishes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn send_across_replicas_moves_publish_bus_and_delivery_metrics() {
    const N: f64 = 3.0;
    let room = "relay";
    let c = Cluster::start(Bus::Redis, 2, defaults).await;
    let (a, b) = (&c.node(0).admin_url, &c.node(1).admin_url);
    let mut sender = c.client(0).await;
    sender.join(room, "sender").await;
    let mut receiver = c.client(1).await;
    receiver.join(room, "receiver").await;
    sender.wait_presence(room, "join", "receiver").await;
    let a0 = flow(a, room).await;
    let b0 = flow(b, room).await;

    let mut acked = Vec::new();
    for k in 0..N as usize {
        acked.push(id_of(&sender.send(room, &format!("m{k}")).await));
    }
    let got: Vec<String> = receiver
        .messages_until("m2")
        .await
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(got, acked);

    let a1 = wait_flow(a, room, "3 published and delivered to the sender", |f| {
        f.published >= a0.published + N && f.delivered >= a0.delivered + N
    })
    .await;
    assert_eq!(a1.received - a0.received, N, "sender's node: received");
    assert_eq!(a1.published - a0.published, N, "sender's node: published");
    let b1 = wait_flow(b, room, "3 delivered from the bus", |f| {
        f.delivered >= b0.delivered + N && f.latency_count >= b0.latency_count + N
    })
    .await;
    assert!(
        b1.bus_received - b0.bus_received >= N,
        "receiver's node: bus_messages_received {b0:?} -> {b1:?}"
    );
    assert_eq!(b1.delivered - b0.delivered, N, "receiver's node: delivered");
    assert_eq!(
        b1.latency_count - b0.latency_count,
        N,
        "receiver's node: one latency sample per delivered message"
    );
    assert_eq!(
        b1.room - b0.room,
        N,
        "receiver's node: room_messages_total{{room}}"
    );
    assert_eq!(
        b1.received, b0.received,
        "the receiver's node received no client message"
    );
    assert_eq!(
        b1.published, b0.published,
        "the receiver's node published nothing"
    );
    let latency = scrape(b).await;
    let sum = latency
        .value("roomcast_delivery_latency_seconds_sum", &[])
        .expect("latency sum");
    assert!(sum >= 0.0 && sum.is_finite(), "latency sum {sum}");
}

/// An error frame counts under its code in `roomcast_errors_total`.
#[tokio::test(flavor = "multi_thread")]
async fn error_frame_counts_under_its_code() {
    let c = Cluster::start(Bus::Memory, 1, defaults).await;
    let admin = &c.node(0).admin_url;
    let code = [("code", "invalid_room")];
    let before = metric(admin, "roomcast_errors_total", &code).await;
    let mut alice = c.client(0).await;
    let answer = alice.try_join("no spaces allowed", "alice").await;
    assert_eq!(answer["code"], "invalid_room", "{answer}");
    wait_metric(admin, "roomcast_errors_total", &code, "one more", |v| {
        v == before + 1.0
    })
    .await;
    assert_eq!(
        metric(admin, "roomcast_errors_total", &[("code", "not_joined")]).await,
        0.0
    );
}

async fn disconnects(admin: &str) -> BTreeMap<String, f64> {
    scrape(admin)
        .await
        .samples("roomcast_disconnects_total")
        .into_iter()
        .map(|s| (s.labels["reason"].clone(), s.value))
        .collect()
}

/// Waits until exactly one disconnect was counted since `before`, under `reason`.
async fn assert_one_disconnect(admin: &str, before: &BTreeMap<String, f64>, reason: &str) {
    let moved = eventually(METRIC_TIMEOUT, || async {
        let now = disconnects(admin).await;
        let moved: BTreeMap<String, f64> = now
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d != 0.0)
            .collect();
        if moved.is_empty() {
            Err(format!(
                "no disconnect counted within {METRIC_TIMEOUT:?} (expected reason {reason})"
            ))
        } else {
            Ok(moved)
        }
    })
    .await;
    assert_eq!(
        moved,
        BTreeMap::from([(reason.to_string(), 1.0)]),
        "disconnects counted since the event"
    );
}

/// A client closing its connection counts as `reason="client"`.
#[tokio::test(flavor = "multi_thread")]
async fn client_close_counts_disconnect_reason_client() {
    let c = Cluster::start(Bus::Memory, 1, defaults).await;
    let admin = &c.node(0).admin_url;
    let mut alice = c.client(0).await;
    alice.join("door", "alice").await;
    let before = disconnects(admin).await;
    alice.close().await;
    assert_one_disconnect(admin, &before, "client").await;
}

fn small_outbound_queue(cfg: &mut roomcast::Config) {
    cfg.limits.outbound_queue = 32;
    cfg.limits.max_text_bytes = 64 * 1024;
    cfg.limits.max_frame_bytes = 128 * 1024;
}

/// A member that stops reading while the room floods is closed as a slow consumer and
/// counted as `reason="slow_consumer"`.
#[tokio::test(flavor = "multi_thread")]
async fn slow_consumer_counts_disconnect_reason_slow_consumer() {
    let room = "firehose";
    let c = Cluster::start(Bus::Memory, 1, small_outbound_queue).await;
    let admin = &c.node(0).admin_url;
    let mut slow = Client::connect_with_recv_buffer(&c.node(0).ws_url, 4096).await;
    slow.join(room, "sleepy").await;
    let mut flooder = c.client(0).await;
    flooder.join(room, "flooder").await;
    let before = disconnects(admin).await;

    let big = "x".repeat(30 * 1024);
    let mut cut = false;
    // Batches of 8 keep the flooder's own acks and messages (16 frames) under its queue.
    // The disconnect is counted once the session has finished closing (up to 3 s after
    // the cut: the close frame's grace, then reading until the peer closes), so keep
    // flooding until it shows, not for a fixed number of batches.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for batch in 0.. {
        if std::time::Instant::now() > deadline {
            break;
        }
        let texts: Vec<String> = (0..8).map(|k| format!("{batch}-{k} {big}")).collect();
        flooder.send_many(room, &texts).await;
        flooder.discard_pending();
        let now = disconnects(admin).await;
        if now.get("slow_consumer") > before.get("slow_consumer") {
            cut = true;
            break;
        }
    }
    assert!(cut, "the slow consumer was never cut off");
    assert_one_disconnect(admin, &before, "slow_consumer").await;
    let closed = slow.wait_closed(FRAME_TIMEOUT).await;
    if let Some((code, reason)) = closed.close {
        assert_eq!((code, reason.as_str()), (1008, "slow consumer"));
    }
}

fn small_frames(cfg: &mut roomcast::Config) {
    cfg.limits.max_text_bytes = 512;
    cfg.limits.max_frame_bytes = 2048;
}

/// A frame over `limits.max_frame_bytes` closes the connection (1009) and counts as
/// `reason="too_large"`.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_frame_counts_disconnect_reason_too_large() {
    let c = Cluster::start(Bus::Memory, 1, small_frames).await;
    let admin = &c.node(0).admin_url;
    let mut alice = c.client(0).await;
    alice.join("hall", "alice").await;
    let before = disconnects(admin).await;
    alice
        .send_json(json!({"type": "send", "room": "hall", "text": "z".repeat(4000)}))
        .await;
    assert_eq!(
        alice.expect_close().await,
        (1009, "frame too large".to_string())
    );
    assert_one_disconnect(admin, &before, "too_large").await;
}

fn strict_rate(cfg: &mut roomcast::Config) {
    cfg.limits.messages_per_second = 1;
    cfg.limits.burst = 2;
    cfg.limits.rate_limit_strikes = 3;
}

/// A client that keeps flooding after `rate_limited` errors is closed (1008 "rate limit"),
/// counted as `reason="policy"`, after `rate_limited` errors were counted.
#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_flood_counts_disconnect_reason_policy() {
    let c = Cluster::start(Bus::Memory, 1, strict_rate).await;
    let admin = &c.node(0).admin_url;
    let mut alice = c.client(0).await;
    alice.join("hall", "alice").await;
    let before = disconnects(admin).await;
    let limited_before = metric(admin, "roomcast_errors_total", &[("code", "rate_limited")]).await;
    for k in 0..40 {
        let frame = json!({"type": "send", "room": "hall", "text": format!("flood{k}")});
        if alice.try_send_text(&frame.to_string()).await.is_err() {
            break;
        }
    }
    let closed = alice.wait_closed(FRAME_TIMEOUT).await;
    assert_eq!(closed.close, Some((1008, "rate limit".to_string())));
    assert_one_disconnect(admin, &before, "policy").await;
    let limited = metric(admin, "roomcast_errors_total", &[("code", "rate_limited")]).await;
    assert!(
        limited > limited_before,
        "rate_limited errors were not counted ({limited_before} -> {limited})"
    );
}

fn fast_heartbeat(cfg: &mut roomcast::Config) {
    cfg.heartbeat.interval = Duration::from_millis(200);
    cfg.heartbeat.timeout = Duration::from_secs(1);
}

/// A client that never answers pings is closed and counted as `reason="heartbeat"`.
#[tokio::test(flavor = "multi_thread")]
async fn silent_client_counts_disconnect_reason_heartbeat() {
    let c = Cluster::start(Bus::Memory, 1, fast_heartbeat).await;
    let admin = &c.node(0).admin_url;
    let before = disconnects(admin).await;
    let mut dead = RawWs::connect(&c.node(0).ws_url).await;
    loop {
        match dead.read_frame(Duration::from_secs(30)).await {
            Some((opcode::CLOSE, _)) | None => break,
            Some(_) => {}
        }
    }
    assert_one_disconnect(admin, &before, "heartbeat").await;
}

/// `roomcast_bus_up` is 1 while Redis is connected, 0 while it is down, and 1 again after
/// it is back (with a reconnect counted).
#[tokio::test(flavor = "multi_thread")]
async fn bus_up_follows_the_redis_connection() {
    let mut c = Cluster::start(Bus::Redis, 1, defaults).await;
    let admin = c.node(0).admin_url.clone();
    wait_metric(&admin, "roomcast_bus_up", &[], "1", |v| v == 1.0).await;
    let reconnects = metric(&admin, "roomcast_bus_reconnects_total", &[]).await;
    c.redis_mut().stop().await;
    wait_metric(&admin, "roomcast_bus_up", &[], "0 with Redis down", |v| {
        v == 0.0
    })
    .await;
    c.redis_mut().restart().await;
    wait_metric(
        &admin,
        "roomcast_bus_up",
        &[],
        "1 after Redis is back",
        |v| v == 1.0,
    )
    .await;
    wait_metric(
        &admin,
        "roomcast_bus_reconnects_total",
        &[],
        "a reconnect counted",
        |v| v > reconnects,
    )
    .await;
}

/// The memory bus is always up.
#[tokio::test(flavor = "multi_thread")]
async fn bus_up_is_one_on_the_memory_bus() {
    let c = Cluster::start(Bus::Memory, 1, defaults).await;
    wait_metric(&c.node(0).admin_url, "roomcast_bus_up", &[], "1", |v| {
        v == 1.0
    })
    .await;
}

/// `roomcast_build_info{version}` is 1 and names this crate's version.
#[tokio::test(flavor = "multi_thread")]
async fn build_info_is_one_with_the_version() {
    let c = Cluster::start(Bus::Memory, 1, defaults).await;
    let e = scrape(&c.node(0).admin_url).await;
    let samples = e.samples("roomcast_build_info");
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert_eq!(
        samples[0].labels.get("version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(samples[0].value, 1.0);
}

fn two_room_labels(cfg: &mut roomcast::Config) {
    cfg.metrics.room_label_cap = 2;
}

/// With `metrics.room_label_cap = 2`, messages in 4 rooms give exactly 2 room labels (the
/// first rooms seen) plus `room="_other"` counting the rest.
#[tokio::test(flavor = "multi_thread")]
async fn room_label_cap_puts_the_rest_under_other() {
    let c = Cluster::start(Bus::Memory, 1, two_room_labels).await;
    let admin = &c.node(0).admin_url;
    let rooms = ["alpha", "beta", "gamma", "delta"];
    let mut alice = c.client(0).await;
    for room in rooms {
        alice.join(room, "alice").await;
    }
    for (i, room) in rooms.iter().enumerate() {
        for k in 0..=i {
            let ack = alice.send(room, &format!("{room}{k}")).await;
            assert_eq!(id_of(&alice.next_message().await), id_of(&ack));
        }
    }
    // 1 + 2 messages under their own labels, 3 + 4 under _other.
    let expected: BTreeMap<String, f64> = BTreeMap::from([
        ("alpha".to_string(), 1.0),
        ("beta".to_string(), 2.0),
        ("_other".to_string(), 7.0),
    ]);
    eventually(METRIC_TIMEOUT, || async {
        let got: BTreeMap<String, f64> = scrape(admin)
            .await
            .samples("roomcast_room_messages_total")
            .into_iter()
            .map(|s| (s.labels["room"].clone(), s.value))
            .collect();
        if got == expected {
            Ok(())
        } else {
            Err(format!(
                "room_messages_total is {got:?}, expected {expected:?}"
            ))
        }
    })
    .await;
}

fn one_connection(cfg: &mut roomcast::Config) {
    cfg.limits.max_connections = 1;
}

/// With `limits.max_connections = 1`, a second upgrade is refused with HTTP 503 and counted
/// as `result="rejected"`; once the first closes, a new one is accepted.
#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_limit_are_refused_503_and_counted_rejected() {
    let c = Cluster::start(Bus::Memory, 1, one_connection).await;
    let node = c.node(0);
    let admin = &node.admin_url;
    let first = node.client().await;
    let (status, head) = upgrade_status(&node.ws_url).await;
    assert_eq!(status, 503, "second connection: {head}");
    assert_eq!(
        metric(
            admin,
            "roomcast_connections_total",
            &[("result", "rejected")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            admin,
            "roomcast_connections_total",
            &[("result", "accepted")]
        )
        .await,
        1.0
    );
    assert_eq!(metric(admin, "roomcast_connections", &[]).await, 1.0);

    first.close().await;
    wait_metric(admin, "roomcast_connections", &[], "0 open", |v| v == 0.0).await;
    let mut again = node.client().await;
    again.join("hall", "again").await;
    assert_eq!(
        metric(
            admin,
            "roomcast_connections_total",
            &[("result", "accepted")]
        )
        .await,
        2.0
    );
}
