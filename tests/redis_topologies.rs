//! The Redis Cluster and Sentinel harness itself (tests/common/redis_cluster.rs): real
//! `redis-server` processes form the topology they are asked for, keys land where the
//! harness says, failovers and slot moves happen, and nothing is left running after a drop.

mod common;

use common::*;

/// Whether a process with `pid` exists (a reaped child does not).
fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// `GET key` on a node without following redirections.
async fn get_on(cluster: &RedisCluster, port: u16, key: &str) -> String {
    cluster.cli(port, &["GET", key]).await
}

/// A 3-master, 1-replica-each cluster reports `cluster_state:ok` with all 16384 slots on
/// every node, `redis-cli --cluster check` agrees, and each master has exactly one replica.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_of_three_masters_covers_all_slots_with_one_replica_each() {
    let cluster = RedisCluster::start(3, 1).await;

    assert_eq!(cluster.seeds().len(), 6, "seeds: {:?}", cluster.seeds());
    let nodes = cluster.nodes().await;
    assert_eq!(nodes.len(), 6);
    let masters: Vec<&ClusterNode> = nodes
        .iter()
        .filter(|n| n.role == RedisRole::Master)
        .collect();
    assert_eq!(masters.len(), 3, "nodes: {nodes:#?}");
    for master in &masters {
        let replicas: Vec<u16> = nodes
            .iter()
            .filter(|n| n.role == RedisRole::Replica && n.master_port == Some(master.port))
            .map(|n| n.port)
            .collect();
        assert_eq!(
            replicas.len(),
            1,
            "replicas of {}: {replicas:?}",
            master.port
        );
    }
    let mut pids: Vec<u32> = nodes.iter().map(|n| n.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 6, "one process per node");

    for node in &nodes {
        let info = cluster.cli(node.port, &["CLUSTER", "INFO"]).await;
        for line in [
            "cluster_state:ok",
            "cluster_slots_assigned:16384",
            "cluster_slots_ok:16384",
            "cluster_known_nodes:6",
            "cluster_size:3",
        ] {
            assert!(
                info.lines().any(|l| l.trim() == line),
                "node {} lacks {line}: {info}",
                node.port
            );
        }
    }
    let seed = cluster.seeds()[0].clone();
    let check = cluster
        .cli(masters[0].port, &["--cluster", "check", &seed])
        .await;
    assert!(
        check.contains("All 16384 slots covered"),
        "cluster check: {check}"
    );
    assert!(
        check.contains("All nodes agree about slots configuration"),
        "cluster check: {check}"
    );
}

/// For keys spread over the masters, the port `master_for_key` names is where
/// `redis-cli -c SET` stored the key: it answers `GET` there, and the other masters redirect
/// to it with `MOVED`.
#[tokio::test(flavor = "multi_thread")]
async fn master_for_key_is_where_set_lands() {
    let cluster = RedisCluster::start(3, 1).await;
    let masters = cluster.master_ports().await;
    let mut owners = std::collections::HashSet::new();

    for i in 0..12 {
        let key = format!("roomcast:room-{i}");
        let value = format!("value-{i}");
        assert_eq!(cluster.cli_follow(&["SET", &key, &value]).await, "OK");

        let owner = cluster.master_for_key(&key).await;
        owners.insert(owner);
        assert!(masters.contains(&owner), "{owner} is not a master");
        assert_eq!(get_on(&cluster, owner, &key).await, value, "key {key}");
        let slot = cluster.keyslot(&key).await.to_string();
        let count = cluster
            .cli(owner, &["CLUSTER", "COUNTKEYSINSLOT", &slot])
            .await;
        assert_eq!(count, "1", "keys of slot {slot} on {owner}");
        for &other in masters.iter().filter(|&&m| m != owner) {
            let reply = get_on(&cluster, other, &key).await;
            assert_eq!(
                reply,
                format!("MOVED {slot} 127.0.0.1:{owner}"),
                "on {other}"
            );
        }
    }
    assert_eq!(owners.len(), 3, "the keys should land on every master");
}

/// SIGKILLing the master of a key's slot (after `WAIT` confirmed the replica has the key)
/// promotes that master's replica: it serves the slot, the cluster is ok again and the key
/// is still readable.
#[tokio::test(flavor = "multi_thread")]
async fn killing_a_keys_master_promotes_its_replica_and_keeps_the_key() {
    let mut cluster = RedisCluster::start(3, 1).await;
    let key = "roomcast:durable";
    let slot = cluster.keyslot(key).await;
    let master = cluster.master_for_key(key).await;
    let nodes = cluster.nodes().await;
    let replica = nodes
        .iter()
        .find(|n| n.master_port == Some(master))
        .expect("the master has a replica")
        .port;
    let master_pid = nodes.iter().find(|n| n.port == master).unwrap().pid;

    let out = cluster
        .cli_session(master, &[&["SET", key, "kept"], &["WAIT", "1", "15000"]])
        .await;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["OK", "1"], "SET + WAIT");

    assert_eq!(cluster.kill_master_for_key(key).await, master);
    assert!(!process_exists(master_pid), "the master process is gone");
    assert!(!cluster.seeds().contains(&format!("127.0.0.1:{master}")));

    let promoted = cluster.wait_promoted(slot).await;
    assert_eq!(promoted, replica, "the killed master's replica takes over");
    assert_eq!(cluster.master_for_key(key).await, replica);
    let role = cluster.cli(replica, &["ROLE"]).await;
    assert_eq!(role.lines().next(), Some("master"), "ROLE: {role}");
    assert_eq!(get_on(&cluster, replica, key).await, "kept");
    assert_eq!(cluster.cli_follow(&["GET", key]).await, "kept");
    for port in cluster.ports() {
        let info = cluster.cli(port, &["CLUSTER", "INFO"]).await;
        assert!(info.contains("cluster_state:ok"), "node {port}: {info}");
    }
}

/// Moving the slot of a stream key (with a consumer group, and a second key in the same
/// slot) to another master moves the slot and both keys, intact.
#[tokio::test(flavor = "multi_thread")]
async fn migrating_a_slot_moves_its_stream_key_and_the_slot() {
    let cluster = RedisCluster::start(3, 1).await;
    let stream = "roomcast:{room-42}:stream";
    let other = "roomcast:{room-42}:meta";
    for i in 0..3 {
        let text = format!("hello {i}");
        let id = cluster
            .cli_follow(&["XADD", stream, "*", "text", &text])
            .await;
        assert!(id.contains('-'), "XADD: {id}");
    }
    let created = cluster
        .cli_follow(&["XGROUP", "CREATE", stream, "readers", "0"])
        .await;
    assert_eq!(created, "OK");
    assert_eq!(cluster.cli_follow(&["SET", other, "m"]).await, "OK");

    let slot = cluster.keyslot(stream).await;
    assert_eq!(cluster.keyslot(other).await, slot);
    let from = cluster.master_for_slot(slot).await;
    let to = *cluster
        .master_ports()
        .await
        .iter()
        .find(|&&m| m != from)
        .expect("another master");

    cluster.migrate_slot(slot, to).await;

    assert_eq!(cluster.master_for_key(stream).await, to);
    assert_eq!(cluster.cli(to, &["TYPE", stream]).await, "stream");
    assert_eq!(cluster.cli(to, &["XLEN", stream]).await, "3");
    let groups = cluster.cli(to, &["XINFO", "GROUPS", stream]).await;
    assert!(groups.lines().any(|l| l == "readers"), "groups: {groups}");
    assert_eq!(cluster.cli(to, &["GET", other]).await, "m");
    let slot_arg = slot.to_string();
    let left = cluster
        .cli(from, &["CLUSTER", "COUNTKEYSINSLOT", &slot_arg])
        .await;
    assert_eq!(left, "0", "keys left on the source");
    assert_eq!(
        cluster.cli(from, &["XLEN", stream]).await,
        format!("MOVED {slot} 127.0.0.1:{to}")
    );
    assert_eq!(cluster.cli_follow(&["XLEN", stream]).await, "3");
    let check = cluster
        .cli(to, &["--cluster", "check", &format!("127.0.0.1:{to}")])
        .await;
    assert!(
        check.contains("All 16384 slots covered"),
        "cluster check: {check}"
    );
}

/// Each of the three sentinels reports the master by name, knows its replica, and the set
/// can authorize a failover (`CKQUORUM`).
#[tokio::test(flavor = "multi_thread")]
async fn sentinels_discover_the_master_and_its_replica() {
    let topology = RedisSentinel::start().await;
    assert_eq!(topology.master_name(), "mymaster");
    assert_eq!(topology.sentinels().len(), 3);
    let [master, replica] = topology.data_ports()[..] else {
        panic!("two data nodes: {:?}", topology.data_ports());
    };
    assert_eq!(topology.master_port().await, master);

    let role = topology.cli(replica, &["ROLE"]).await;
    let role: Vec<&str> = role.lines().collect();
    assert_eq!(role[..3], ["slave", "127.0.0.1", &master.to_string()]);
    for sentinel in topology.sentinel_ports() {
        let addr = topology
            .cli(
                sentinel,
                &["SENTINEL", "get-master-addr-by-name", "mymaster"],
            )
            .await;
        assert_eq!(addr, format!("127.0.0.1\n{master}"), "sentinel {sentinel}");
        let replicas = topology
            .cli(sentinel, &["SENTINEL", "REPLICAS", "mymaster"])
            .await;
        assert!(
            replicas.contains(&format!("127.0.0.1:{replica}")),
            "sentinel {sentinel} replicas: {replicas}"
        );
        let quorum = topology
            .cli(sentinel, &["SENTINEL", "CKQUORUM", "mymaster"])
            .await;
        assert!(quorum.starts_with("OK 3 usable"), "{quorum}");
    }
}

/// After `kill_master`, every sentinel reports the promoted replica, which answers `ROLE` as
/// master and still has what was written (and acknowledged by `WAIT`) before the kill.
#[tokio::test(flavor = "multi_thread")]
async fn sentinels_report_the_promoted_replica_after_the_master_is_killed() {
    let mut topology = RedisSentinel::start().await;
    let [master, replica] = topology.data_ports()[..] else {
        panic!("two data nodes: {:?}", topology.data_ports());
    };
    let out = topology
        .cli_session(
            master,
            &[&["SET", "greeting", "hi"], &["WAIT", "1", "15000"]],
        )
        .await;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["OK", "1"], "SET + WAIT");

    assert_eq!(topology.kill_master().await, master);
    assert_eq!(topology.data_ports(), [replica]);
    let promoted = topology.wait_failover(master).await;

    assert_eq!(promoted, replica);
    assert_eq!(topology.master_port().await, replica);
    for sentinel in topology.sentinel_ports() {
        let addr = topology
            .cli(
                sentinel,
                &["SENTINEL", "get-master-addr-by-name", "mymaster"],
            )
            .await;
        assert_eq!(addr, format!("127.0.0.1\n{replica}"), "sentinel {sentinel}");
    }
    let role = topology.cli(replica, &["ROLE"]).await;
    assert_eq!(role.lines().next(), Some("master"), "ROLE: {role}");
    assert_eq!(topology.cli(replica, &["GET", "greeting"]).await, "hi");
    assert_eq!(topology.cli(replica, &["SET", "after", "1"]).await, "OK");
}

/// Dropping a cluster or a sentinel set kills every process it started and removes its
/// temp dir.
#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_topology_kills_every_process_and_removes_its_dir() {
    let cluster = RedisCluster::start(3, 0).await;
    let sentinel = RedisSentinel::start().await;
    let mut pids: Vec<u32> = cluster.nodes().await.iter().map(|n| n.pid).collect();
    let ports = sentinel
        .data_ports()
        .into_iter()
        .chain(sentinel.sentinel_ports());
    for port in ports {
        let info = sentinel.cli(port, &["INFO", "server"]).await;
        let pid = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("process_id:"))
            .and_then(|p| p.parse().ok())
            .expect("INFO server has process_id");
        pids.push(pid);
    }
    assert_eq!(pids.len(), 3 + 5);
    assert!(pids.iter().all(|&p| process_exists(p)));
    let dirs = [cluster.dir().to_path_buf(), sentinel.dir().to_path_buf()];
    assert!(dirs.iter().all(|d| d.exists()));

    drop(cluster);
    drop(sentinel);

    let alive: Vec<u32> = pids.into_iter().filter(|&p| process_exists(p)).collect();
    assert!(alive.is_empty(), "still running: {alive:?}");
    assert!(dirs.iter().all(|d| !d.exists()), "dirs left: {dirs:?}");
}
