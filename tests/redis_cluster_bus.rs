//! The cluster and Sentinel buses under failure (issue 12), on real processes: a Redis
//! Cluster of three masters with a replica each and three gateways, and a Sentinel
//! topology (master, replica, three sentinels) with three gateways.
//!
//! - Rooms travel on shard channels: `PUBSUB SHARDCHANNELS` on the owning master lists the
//!   room's channel, `PUBSUB CHANNELS` lists no room channel on any node, and the shard
//!   channel is gone after the last member leaves.
//! - Killing the master that owns a busy room (or the Sentinel master), or moving the
//!   room's slot to another master, under traffic: delivery continues in one order, every
//!   acknowledged message reaches every member exactly once (also members who resume with
//!   `since` after the event), and readiness went false and came back.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use tokio::sync::Mutex;

const ROOM: &str = "busy";

/// The gateways' logs on stderr when `RUST_LOG` is set (to debug a failure).
fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_ansi(false)
            .try_init();
    }
}

/// Three gateways on the cluster, each publish acknowledged only once a replica has it.
async fn gateways_on_cluster(cluster: &RedisCluster) -> Vec<Node> {
    logs();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let mut cfg = node_config(None, &format!("gw-{i}"));
        use_cluster(&mut cfg, cluster);
        cfg.redis.replica_acks = 1;
        nodes.push(Node::start(cfg).await);
    }
    nodes
}

/// Three gateways finding the master through the sentinels.
async fn gateways_on_sentinel(sentinel: &RedisSentinel) -> Vec<Node> {
    logs();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let mut cfg = node_config(None, &format!("gw-{i}"));
        cfg.redis.mode = roomcast::RedisMode::Sentinel;
        cfg.redis.sentinels = sentinel.sentinels();
        cfg.redis.sentinel_master = Some(sentinel.master_name().to_string());
        cfg.redis.replica_acks = 1;
        nodes.push(Node::start(cfg).await);
    }
    nodes
}

/// Shard channels listed by `PUBSUB SHARDCHANNELS` (or classic ones by `PUBSUB CHANNELS`)
/// on one node.
async fn channels_on(cluster: &RedisCluster, port: u16, shard: bool) -> Vec<String> {
    let sub = if shard { "SHARDCHANNELS" } else { "CHANNELS" };
    cluster
        .cli(port, &["PUBSUB", sub])
        .await
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Polls every gateway's `/readyz` until stopped; remembers whether any answered
/// anything but 200 (and what).
struct ReadinessWatch {
    seen_unready: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadinessWatch {
    fn start(nodes: &[Node]) -> ReadinessWatch {
        let urls: Vec<String> = nodes
            .iter()
            .map(|n| format!("{}/readyz", n.admin_url))
            .collect();
        let seen_unready = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, halt) = (seen_unready.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !halt.load(Ordering::Relaxed) {
                for url in &urls {
                    if let Ok((status, body)) = http_get(url).await
                        && status != 200
                    {
                        seen.lock().await.push(format!("{url}: {status} {body}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        ReadinessWatch {
            seen_unready,
            stop,
            task,
        }
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.seen_unready.lock().await.clone()
    }
}

/// What the senders got acknowledged: id -> text.
type Acked = Arc<Mutex<HashMap<String, String>>>;

/// One sender per gateway, each sending `count` messages with an `idem` key, one every
/// 20 ms; a send refused as `unavailable` (or timed out) is retried with the same key, so
/// a message is acknowledged once and never published twice.
fn start_senders(nodes: &[Node], count: usize, acked: Acked) -> Vec<tokio::task::JoinHandle<()>> {
    nodes
        .iter()
        .enumerate()
        .map(|(g, node)| {
            let (url, acked) = (node.ws_url.clone(), acked.clone());
            tokio::spawn(async move {
                let mut c = Client::connect(&url).await;
                c.join(ROOM, &format!("sender-{g}")).await;
                for i in 0..count {
                    let text = format!("m-{g}-{i}");
                    let frame = json!({"room": ROOM, "text": text, "idem": text});
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        let reply = c.try_send_frame(frame.clone()).await;
                        if reply["type"] == "ack" {
                            let id = id_of(&reply);
                            acked.lock().await.insert(id, text.clone());
                            break;
                        }
                        assert_eq!(
                            reply["code"], "unavailable",
                            "sender-{g}: only `unavailable` may refuse a send: {reply}"
                        );
                        assert!(tries < 200, "sender-{g}: {text} never acknowledged");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    c.discard_pending();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect()
}

/// Reads `message` frames of the room until every id in `want` has arrived (or 30 s
/// pass); returns (id, text) in arrival order.
async fn collect_until(
    c: &mut Client,
    mut got: Vec<(String, String)>,
    want: &HashSet<String>,
) -> Vec<(String, String)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen: HashSet<&String> = got.iter().map(|(id, _)| id).collect();
        if want.iter().all(|id| seen.contains(id)) || std::time::Instant::now() > deadline {
            return got;
        }
        if let Some(v) = c.try_next_json(Duration::from_millis(500)).await
            && v["type"] == "message"
            && v["room"] == ROOM
        {
            got.push((id_of(&v), text_of(&v)));
        }
    }
}

/// Checks one member's view: ids strictly increasing (one order, no duplicate) and every
/// acknowledged message present.
fn assert_complete(who: &str, got: &[(String, String)], acked: &HashMap<String, String>) {
    let ids: Vec<String> = got.iter().map(|(id, _)| id.clone()).collect();
    assert_strictly_increasing(&ids);
    let seen: HashMap<&String, &String> = got.iter().map(|(id, text)| (id, text)).collect();
    let missing: Vec<(&String, &String)> = acked
        .iter()
        .filter(|(id, _)| !seen.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{who} lost {} acknowledged messages, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    for (id, text) in acked {
        assert_eq!(seen[id], text, "{who}: message {id} changed");
    }
}

/// A member that drains its messages in the background; `stop` hands back the client
/// and what it received.
struct Reader {
    task: tokio::task::JoinHandle<(Client, Vec<(String, String)>)>,
    stop: Arc<AtomicBool>,
}

impl Reader {
    fn start(mut c: Client) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let task = tokio::spawn(async move {
            let mut got = Vec::new();
            while !halt.load(Ordering::Relaxed) {
                if let Some(v) = c.try_next_json(Duration::from_millis(100)).await
                    && v["type"] == "message"
                    && v["room"] == ROOM
                {
                    got.push((id_of(&v), text_of(&v)));
                }
            }
            (c, got)
        });
        Reader { task, stop }
    }

    async fn stop(self) -> (Client, Vec<(String, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("reader task")
    }
}

/// Runs traffic through `nodes` while `event` happens (after a first stretch of traffic),
/// with one steady member per gateway and one member that leaves before the event and
/// resumes with `since` after it; then checks every guarantee. With `readiness_dips`,
/// some gateway's `/readyz` must have failed meanwhile (a lost master takes seconds to
/// replace; a slot move is recovered too fast to be seen by polling, and is checked by
/// `roomcast_bus_recoveries_total{reason="moved"}` instead). Returns the steady members,
/// still in the room.
async fn traffic_through<F, Fut>(nodes: &[Node], readiness_dips: bool, event: F) -> Vec<Client>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut readers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = node.client().await;
        c.join(ROOM, &format!("reader-{i}")).await;
        readers.push(Reader::start(c));
    }
    let mut resumer = nodes[1].client().await;
    resumer.join(ROOM, "resumer").await;
    let resumer = Reader::start(resumer);

    let acked: Acked = Arc::default();
    let senders = start_senders(nodes, 60, acked.clone());
    // Some traffic first, then the resumer goes away with its cursor.
    eventually(Duration::from_secs(20), || async {
        let n = acked.lock().await.len();
        if n >= 30 {
            Ok(())
        } else {
            Err(format!("{n} acked"))
        }
    })
    .await;
    let (resumer, before) = resumer.stop().await;
    resumer.close().await;
    let cursor = before
        .last()
        .map(|(id, _)| id.clone())
        .expect("resumer got messages");

    let watch = ReadinessWatch::start(nodes);
    event().await;
    for s in senders {
        s.await.expect("sender");
    }
    // Readiness must come back on every gateway.
    for node in nodes {
        wait_ready(&node.admin_url, Duration::from_secs(30)).await;
    }
    let unready = watch.finish().await;
    if readiness_dips {
        assert!(
            !unready.is_empty(),
            "readiness never went false during the failure"
        );
    }

    let acked = acked.lock().await.clone();
    assert_eq!(acked.len(), 180, "every message acknowledged once");
    let want: HashSet<String> = acked.keys().cloned().collect();
    let mut members = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        let (mut c, got) = r.stop().await;
        let got = collect_until(&mut c, got, &want).await;
        assert_complete(&format!("reader-{i}"), &got, &acked);
        members.push(c);
    }
    // The resumer comes back (on another gateway) after the event.
    let mut c = nodes[2].client().await;
    let joined = c.join_since(ROOM, "resumer", &cursor).await;
    let mut got = before;
    got = collect_until(&mut c, got, &want).await;
    assert_eq!(
        joined["recovered"], true,
        "resume after the failure must be recovered: {joined}"
    );
    assert_complete("the resumer", &got, &acked);
    members.push(c);
    members
}

/// Cross-replica delivery in one order on three gateways; the room's channel is a shard
/// channel on the owning master only, no classic room channel exists anywhere, and the
/// shard channel goes away with the last member.
#[tokio::test(flavor = "multi_thread")]
async fn rooms_use_shard_channels_on_their_owner_and_deliver_in_one_order() {
    let cluster = RedisCluster::start(3, 1).await;
    let nodes = gateways_on_cluster(&cluster).await;
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = node.client().await;
        c.join(ROOM, &format!("user-{i}")).await;
        clients.push(c);
    }
    let texts: Vec<String> = (0..20).map(|i| format!("hello-{i}")).collect();
    let mut sent = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let mine: Vec<String> = texts.iter().map(|t| format!("{t}-from-{i}")).collect();
        sent.extend(c.send_many(ROOM, &mine).await);
    }
    let mut orders = Vec::new();
    for c in &mut clients {
        let mut got = Vec::new();
        for _ in 0..sent.len() {
            got.push(id_of(&c.next_message().await));
        }
        assert_strictly_increasing(&got);
        let mut acked = sent.clone();
        acked.sort_by_key(|id| parse_id(id));
        assert_eq!(got, acked, "every acknowledged message once");
        orders.push(got);
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "every gateway delivers one order"
    );

    let channel = format!("roomcast:{{{ROOM}}}:ch");
    let owner = cluster.master_for_key(&channel).await;
    assert!(
        channels_on(&cluster, owner, true).await.contains(&channel),
        "PUBSUB SHARDCHANNELS on the owner ({owner}) lists {channel}"
    );
    assert_eq!(
        cluster
            .cli(owner, &["PUBSUB", "SHARDNUMSUB", &channel])
            .await
            .lines()
            .nth(1)
            .map(str::trim),
        Some("3"),
        "each gateway subscribes the room once"
    );
    for port in cluster.ports() {
        let classic = channels_on(&cluster, port, false).await;
        assert!(
            !classic.iter().any(|c| c.starts_with("roomcast:")),
            "no classic roomcast channel on {port}: {classic:?}"
        );
        if port != owner {
            let shard = channels_on(&cluster, port, true).await;
            assert!(
                !shard.contains(&channel),
                "only the owner carries {channel}; {port} lists {shard:?}"
            );
        }
    }

    // Not one classic PUBLISH anywhere (scripts' calls count in INFO commandstats): every
    // message, presence notice and control message went out with SPUBLISH.
    let mut spublished = 0u64;
    for port in cluster.ports() {
        let stats = cluster.cli(port, &["INFO", "commandstats"]).await;
        assert!(
            !stats.contains("cmdstat_publish:"),
            "classic PUBLISH on {port}: {stats}"
        );
        spublished += stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_spublish:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    assert!(
        spublished >= 60,
        "only {spublished} SPUBLISH calls for 60 messages"
    );

    for c in &mut clients {
        c.leave(ROOM).await;
    }
    eventually(Duration::from_secs(10), || async {
        let listed = channels_on(&cluster, owner, true).await;
        if listed.contains(&channel) {
            Err(format!("{channel} still subscribed on {owner}: {listed:?}"))
        } else {
            Ok(())
        }
    })
    .await;
}

/// SIGKILL the master owning a busy room mid-traffic: after the replica's promotion,
/// delivery continues, nothing acknowledged is lost or duplicated for steady or resuming
/// members, readiness dipped and came back, and the room is subscribed on the new master.
#[tokio::test(flavor = "multi_thread")]
async fn killing_the_rooms_master_loses_no_acknowledged_message() {
    let mut cluster = RedisCluster::start(3, 1).await;
    let nodes = gateways_on_cluster(&cluster).await;
    let channel = format!("roomcast:{{{ROOM}}}:ch");
    let slot = cluster.keyslot(&channel).await;
    let cluster_ref = &mut cluster;
    let _members = traffic_through(&nodes, true, || async move {
        cluster_ref.kill_master_for_key(&channel).await;
        cluster_ref.wait_promoted(slot).await;
    })
    .await;
    let channel = format!("roomcast:{{{ROOM}}}:ch");
    let owner = cluster.master_for_slot(slot).await;
    eventually(Duration::from_secs(10), || async {
        let listed = channels_on(&cluster, owner, true).await;
        if listed.contains(&channel) {
            Ok(())
        } else {
            Err(format!(
                "{channel} not subscribed on the new master {owner}: {listed:?}"
            ))
        }
    })
    .await;
}

/// WAIT blocks the connection it is sent on, and every command to a Redis node shares
/// one pipelined connection. With the replica frozen (connected, acknowledging nothing)
/// each WAIT lasts all of `redis.replica_ack_timeout`; one WAIT per publish queued every
/// command behind them, so with a few members sending at once nothing else could reach
/// Redis in time: a join elsewhere failed `unavailable`. Publishes to one master share
/// one WAIT in flight, so a join waits behind one at most and succeeds, while the sends
/// are refused as `unavailable` (no replica confirms them).
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_replica_does_not_stall_other_commands_behind_waits() {
    let mut sentinel = RedisSentinel::start().await;
    let nodes = gateways_on_sentinel(&sentinel).await;
    let node = &nodes[0];
    let mut senders = Vec::new();
    for s in 0..12 {
        let mut c = node.client().await;
        c.join(ROOM, &format!("sender-{s}")).await;
        senders.push(c);
    }
    sentinel.freeze_replica().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (s, mut c) in senders.into_iter().enumerate() {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let reply = c
                    .try_send_frame(json!({"room": ROOM, "text": format!("m-{s}-{i}")}))
                    .await;
                if reply["type"] != "ack" {
                    assert_eq!(reply["code"], "unavailable", "{reply}");
                }
                c.discard_pending();
            }
        }));
    }
    // Let the sends pile up behind WAITs, then join other rooms (no WAIT of their own).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut refused = Vec::new();
    for r in 0..5 {
        let mut c = node.client().await;
        let reply = c.try_join(&format!("quiet-{r}"), "joiner").await;
        if reply["type"] != "joined" {
            refused.push(reply);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("sender");
    }
    assert!(
        refused.is_empty(),
        "joins refused while sends waited for a frozen replica: {refused:?}"
    );
}

/// Move the busy room's slot to another master under traffic: the same guarantees, and
/// the channel ends subscribed on the new owner only (nothing orphaned on the old one).
#[tokio::test(flavor = "multi_thread")]
async fn moving_the_rooms_slot_loses_no_acknowledged_message() {
    let cluster = RedisCluster::start(3, 1).await;
    let nodes = gateways_on_cluster(&cluster).await;
    let channel = format!("roomcast:{{{ROOM}}}:ch");
    let slot = cluster.keyslot(&channel).await;
    let from = cluster.master_for_slot(slot).await;
    let to = *cluster
        .master_ports()
        .await
        .iter()
        .find(|p| **p != from)
        .expect("another master");
    let _members = traffic_through(&nodes, false, || cluster.migrate_slot(slot, to)).await;
    for node in &nodes {
        let moved = metric_value(
            &node.admin_url,
            "roomcast_bus_recoveries_total",
            &[("reason", "moved")],
        )
        .await;
        assert!(
            moved >= 1.0,
            "{}: no recovery after the move",
            node.admin_url
        );
    }
    eventually(Duration::from_secs(10), || async {
        let new = channels_on(&cluster, to, true).await;
        let old = channels_on(&cluster, from, true).await;
        if new.contains(&channel) && !old.contains(&channel) {
            Ok(())
        } else {
            Err(format!(
                "old owner {from}: {old:?}; new owner {to}: {new:?}"
            ))
        }
    })
    .await;
}

/// Sentinel: SIGKILL the master under traffic; the gateways follow the sentinels to the
/// promoted replica with the same guarantees.
#[tokio::test(flavor = "multi_thread")]
async fn sentinel_failover_loses_no_acknowledged_message() {
    let mut sentinel = RedisSentinel::start().await;
    let nodes = gateways_on_sentinel(&sentinel).await;
    let topology = &mut sentinel;
    let _members = traffic_through(&nodes, true, || async move {
        let old = topology.kill_master().await;
        topology.wait_failover(old).await;
    })
    .await;
}

/// A gateway killed with SIGKILL cannot say goodbye: on the cluster its members, in rooms on
/// different shards, are reaped room by room (each on its own shard), announced as left,
/// and the dead node is forgotten.
#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_gateways_members_are_reaped_on_every_shard() {
    let cluster = RedisCluster::start(3, 0).await;
    let mut cfg = node_config(None, "survivor");
    use_cluster(&mut cfg, &cluster);
    let survivor = Node::start(cfg).await;
    let seeds = cluster.seeds().join(",");
    let mut doomed = ProcessNode::start(
        None,
        "doomed",
        &[
            ("ROOMCAST_REDIS__MODE", "cluster"),
            ("ROOMCAST_REDIS__NODES", &seeds),
            ("ROOMCAST_PRESENCE__TTL", "2s"),
            ("ROOMCAST_PRESENCE__REFRESH", "300ms"),
        ],
    )
    .await;
    // Rooms whose channels live on three different masters.
    let mut rooms: Vec<String> = Vec::new();
    let mut owners = HashSet::new();
    for i in 0.. {
        let room = format!("mortal-{i}");
        let owner = cluster
            .master_for_key(&format!("roomcast:{{{room}}}:ch"))
            .await;
        if owners.insert(owner) {
            rooms.push(room);
        }
        if rooms.len() == 3 {
            break;
        }
    }
    let mut watcher = survivor.client().await;
    let mut victim = doomed.client().await;
    for room in &rooms {
        watcher.join(room, "watcher").await;
        victim.join(room, "victim").await;
        let p = watcher.expect("presence").await;
        assert_eq!(
            (p["event"].as_str(), p["room"].as_str()),
            (Some("join"), Some(room.as_str()))
        );
    }

    doomed.kill().await;

    let mut left = HashSet::new();
    while left.len() < rooms.len() {
        match watcher.read_incoming(Duration::from_secs(30)).await {
            Some(Incoming::Json(v)) if v["type"] == "presence" && v["event"] == "leave" => {
                assert_eq!(v["user"]["name"], "victim", "{v}");
                left.insert(v["room"].as_str().unwrap_or_default().to_string());
            }
            other => panic!("watcher: no leave for every room of the crashed gateway: {other:?}"),
        }
    }
    let seed = cluster.ports()[0];
    eventually(Duration::from_secs(10), || async {
        let score = cluster
            .cli_follow(&["ZSCORE", "roomcast:nodes", "doomed"])
            .await;
        let set = cluster
            .cli_follow(&["EXISTS", "roomcast:node:doomed:rooms"])
            .await;
        if score.trim().is_empty() && set.trim() == "0" {
            Ok(())
        } else {
            Err(format!(
                "the dead node is still known (seed {seed}): score {score:?}, room set {set:?}"
            ))
        }
    })
    .await;
    for room in &rooms {
        let mut late = survivor.client().await;
        let joined = late.join(room, "late").await;
        let names: Vec<&str> = joined["members"]
            .as_array()
            .map(|m| m.iter().filter_map(|u| u["name"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            !names.contains(&"victim"),
            "{room}: still lists the victim: {joined}"
        );
    }
    drop(victim);
}
