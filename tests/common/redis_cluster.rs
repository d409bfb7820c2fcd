//! Real Redis Cluster and Redis Sentinel topologies for tests: `redis-server` children on free
//! loopback ports, each topology in its own temp dir, every process SIGKILLed on drop.
//!
//! - [`RedisCluster`]: `masters` masters (the 16384 slots split evenly) with
//!   `replicas_per_master` replicas each; find a key's master, kill it and wait for its replica
//!   to take over, move a slot (with its keys) to another master, run commands on any node.
//! - [`RedisSentinel`]: one master, one replica and three sentinels monitoring
//!   [`SENTINEL_MASTER_NAME`]; kill the master and wait for the sentinels' failover.
//!
//! Commands go through `redis-cli` (raw output: one line per reply element, no type prefixes).
//! Waits poll with generous timeouts; nothing asserts how fast Redis is. When a test panics
//! the temp dir (node logs, `nodes-PORT.conf`, sentinel configs) is kept and its path printed.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::process::Command;

/// Number of hash slots of a Redis Cluster.
pub const REDIS_CLUSTER_SLOTS: u16 = 16384;
/// The name the sentinels of [`RedisSentinel`] monitor their master under.
pub const SENTINEL_MASTER_NAME: &str = "mymaster";

/// How long one spawned `redis-server` may take to answer.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a topology may take to form, a failover to complete or a slot move to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Pause between two polls of a topology's state.
const POLL: Duration = Duration::from_millis(100);
/// `cluster-node-timeout` and sentinel `down-after-milliseconds`: failures are detected
/// within a few seconds.
const NODE_TIMEOUT_MS: u32 = 1000;

/// The role a Redis node reports for itself (`ROLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisRole {
    Master,
    Replica,
}

/// A live node of a [`RedisCluster`], as it reports itself right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// Client port (`127.0.0.1:port`).
    pub port: u16,
    /// Cluster bus port (`cluster-port`).
    pub bus_port: u16,
    /// Cluster node id (`CLUSTER MYID`).
    pub id: String,
    /// OS process id of its `redis-server`.
    pub pid: u32,
    pub role: RedisRole,
    /// For a replica: the client port of its master.
    pub master_port: Option<u16>,
}

/// A Redis Cluster of real `redis-server` processes on loopback. Killed on drop.
pub struct RedisCluster {
    nodes: Vec<ClusterProcess>,
    // Declared last: dropped (removed) after every process is dead.
    dir: TempDir,
}

struct ClusterProcess {
    server: Server,
    bus_port: u16,
    id: String,
}

impl RedisCluster {
    /// Starts `masters * (1 + replicas_per_master)` cluster-enabled `redis-server`s, gives
    /// master `i` the `i`-th of `masters` even slot ranges, joins them (`CLUSTER MEET`), makes
    /// the replicas replicate their masters (`CLUSTER REPLICATE`), and waits until every node
    /// reports `cluster_state:ok` with all 16384 slots served by live masters, every node
    /// agrees on who serves which slot and who replicates whom, and every replica's link to
    /// its master is up. The usual shape is `start(3, 1)`. A failover needs the votes of a
    /// majority of masters, so use at least 3 masters in tests that kill one.
    pub async fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        assert!(masters >= 1, "a cluster needs at least one master");
        ensure_installed().await;
        let dir = TempDir::new("cluster");
        let total = masters * (1 + replicas_per_master);
        let mut used = HashSet::new();
        let mut nodes = Vec::with_capacity(total);
        for _ in 0..total {
            nodes.push(start_cluster_node(dir.path(), &mut used).await);
        }
        let mut cluster = RedisCluster { nodes, dir };
        cluster.form(masters, replicas_per_master).await;
        cluster
    }

    async fn form(&mut self, masters: usize, replicas_per_master: usize) {
        for i in 0..self.nodes.len() {
            let port = self.nodes[i].server.port;
            self.nodes[i].id = self.cli_ok_line(port, &["CLUSTER", "MYID"]).await;
        }
        let slots = usize::from(REDIS_CLUSTER_SLOTS);
        for i in 0..masters {
            let (first, last) = (i * slots / masters, (i + 1) * slots / masters - 1);
            let port = self.nodes[i].server.port;
            let (first, last) = (first.to_string(), last.to_string());
            self.expect_ok(port, &["CLUSTER", "ADDSLOTSRANGE", &first, &last])
                .await;
        }
        // Distinct config epochs up front, as `redis-cli --cluster create` does.
        for (i, node) in self.nodes.iter().enumerate() {
            let epoch = (i + 1).to_string();
            self.expect_ok(node.server.port, &["CLUSTER", "SET-CONFIG-EPOCH", &epoch])
                .await;
        }
        let first = self.nodes[0].server.port;
        for node in &self.nodes[1..] {
            let (port, bus) = (node.server.port.to_string(), node.bus_port.to_string());
            self.expect_ok(first, &["CLUSTER", "MEET", "127.0.0.1", &port, &bus])
                .await;
        }
        self.wait_until("every node to know every other node", async |c| {
            c.check_all_known().await
        })
        .await;

        let mut expected_master = HashMap::new();
        for r in 0..masters * replicas_per_master {
            let replica = &self.nodes[masters + r];
            let master = &self.nodes[r % masters];
            expected_master.insert(replica.id.clone(), master.id.clone());
            self.expect_ok(replica.server.port, &["CLUSTER", "REPLICATE", &master.id])
                .await;
        }
        self.wait_until("the cluster to be formed and healthy", async |c| {
            c.check_healthy().await?;
            c.check_replication(&expected_master).await
        })
        .await;
    }

    /// `127.0.0.1:PORT` of every live node: seeds for a cluster client.
    pub fn seeds(&self) -> Vec<String> {
        self.live()
            .map(|n| format!("127.0.0.1:{}", n.server.port))
            .collect()
    }

    /// Client ports of every live node.
    pub fn ports(&self) -> Vec<u16> {
        self.live().map(|n| n.server.port).collect()
    }

    /// Every live node with the role it reports for itself now (`ROLE`).
    pub async fn nodes(&self) -> Vec<ClusterNode> {
        let mut out = Vec::new();
        for node in self.live() {
            let port = node.server.port;
            let role = self.cli(port, &["ROLE"]).await;
            let lines: Vec<&str> = role.lines().map(str::trim).collect();
            let (role, master_port) = match lines.first() {
                Some(&"master") => (RedisRole::Master, None),
                Some(&"slave") => {
                    let master = lines.get(2).and_then(|p| p.parse().ok());
                    (RedisRole::Replica, master)
                }
                _ => panic!("unexpected ROLE reply from node {port}: {role:?}"),
            };
            out.push(ClusterNode {
                port,
                bus_port: node.bus_port,
                id: node.id.clone(),
                pid: node.server.pid().expect("a live node has a pid"),
                role,
                master_port,
            });
        }
        out
    }

    /// Ports of the live nodes that are masters now.
    pub async fn master_ports(&self) -> Vec<u16> {
        self.nodes()
            .await
            .into_iter()
            .filter(|n| n.role == RedisRole::Master)
            .map(|n| n.port)
            .collect()
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub async fn keyslot(&self, key: &str) -> u16 {
        let port = self.any_port();
        let out = self.cli_ok_line(port, &["CLUSTER", "KEYSLOT", key]).await;
        out.parse()
            .unwrap_or_else(|_| panic!("unexpected CLUSTER KEYSLOT reply: {out:?}"))
    }

    /// Port of the live master serving `slot`, as the masters claim it for themselves
    /// (`myself` in `CLUSTER NODES`). Panics when no live master, or more than one, claims it.
    pub async fn master_for_slot(&self, slot: u16) -> u16 {
        let mut owners = Vec::new();
        for node in self.live() {
            let view = cluster_nodes(node.server.port)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let me = view.iter().find(|l| l.is_myself());
            if me.is_some_and(|me| me.is_master() && me.serves(slot)) {
                owners.push(node.server.port);
            }
        }
        match owners.as_slice() {
            [port] => *port,
            _ => panic!(
                "expected one live master serving slot {slot}, found {owners:?}:\n{}",
                self.describe().await
            ),
        }
    }

    /// Port of the live master serving `key`'s slot.
    pub async fn master_for_key(&self, key: &str) -> u16 {
        let slot = self.keyslot(key).await;
        self.master_for_slot(slot).await
    }

    /// SIGKILLs the master serving `key`'s slot (a crash: no failover is started by hand)
    /// and returns its port. Follow with [`RedisCluster::wait_promoted`].
    pub async fn kill_master_for_key(&mut self, key: &str) -> u16 {
        let port = self.master_for_key(key).await;
        self.kill(port);
        port
    }

    /// SIGKILLs the node on `port` and waits for the process to exit.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.server.port == port && n.server.is_running())
            .unwrap_or_else(|| panic!("no live cluster node on port {port}"));
        node.server.kill();
    }

    /// Waits until a live node (a promoted replica, after its master was killed) serves
    /// `slot` as master, every live node agrees on it and reports `cluster_state:ok` with all
    /// slots served by live masters; returns the new master's port.
    pub async fn wait_promoted(&self, slot: u16) -> u16 {
        self.wait_until(&format!("a live master to serve slot {slot}"), async |c| {
            c.check_healthy().await?;
            c.agreed_owner(slot).await
        })
        .await
    }

    /// Moves `slot`, with every key in it (any type: `MIGRATE` copies them with
    /// `DUMP`/`RESTORE`), from the master serving it to the master on `to_port`, following
    /// the documented sequence: `CLUSTER SETSLOT slot IMPORTING` on the target, `MIGRATING`
    /// on the source, `CLUSTER GETKEYSINSLOT` + `MIGRATE ... KEYS` until the slot is empty on
    /// the source, then `CLUSTER SETSLOT slot NODE target` on the target, the source and the
    /// other masters. Waits until every live node sees the target serving the slot and the
    /// cluster is healthy. Keys containing a newline are not supported (`redis-cli` lists
    /// keys one per line).
    pub async fn migrate_slot(&self, slot: u16, to_port: u16) {
        let from_port = self.master_for_slot(slot).await;
        assert_ne!(
            from_port, to_port,
            "slot {slot} is already served by {to_port}"
        );
        let from_id = self.id_of(from_port);
        let to_id = self.id_of(to_port);
        let slot_arg = slot.to_string();
        let s = slot_arg.as_str();

        self.expect_ok(to_port, &["CLUSTER", "SETSLOT", s, "IMPORTING", &from_id])
            .await;
        self.expect_ok(from_port, &["CLUSTER", "SETSLOT", s, "MIGRATING", &to_id])
            .await;
        let to = to_port.to_string();
        loop {
            let keys = self
                .cli(from_port, &["CLUSTER", "GETKEYSINSLOT", s, "100"])
                .await;
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &to, "", "0", "10000", "REPLACE"];
            args.push("KEYS");
            args.extend(keys.iter().copied());
            let out = self.cli(from_port, &args).await;
            assert!(
                out == "OK" || out == "NOKEY",
                "MIGRATE of slot {slot} from {from_port} to {to_port} failed: {out:?}"
            );
        }
        self.expect_ok(to_port, &["CLUSTER", "SETSLOT", s, "NODE", &to_id])
            .await;
        self.expect_ok(from_port, &["CLUSTER", "SETSLOT", s, "NODE", &to_id])
            .await;
        for port in self.master_ports().await {
            if port != to_port && port != from_port {
                self.expect_ok(port, &["CLUSTER", "SETSLOT", s, "NODE", &to_id])
                    .await;
            }
        }
        self.wait_until(&format!("slot {slot} to move to {to_port}"), async |c| {
            c.check_healthy().await?;
            let owner = c.agreed_owner(slot).await?;
            if owner == to_port {
                Ok(())
            } else {
                Err(format!("slot {slot} is still served by {owner}"))
            }
        })
        .await;
    }

    /// Runs one command with `redis-cli` on the node on `port` and returns its trimmed raw
    /// output; an error reply comes back as text (`MOVED 1234 127.0.0.1:PORT`, `ERR ...`).
    /// Panics when `redis-cli` cannot run or connect.
    pub async fn cli(&self, port: u16, args: &[&str]) -> String {
        redis_cli(port, args)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs one command with `redis-cli -c` (following `MOVED`/`ASK` redirections) through
    /// a live node.
    pub async fn cli_follow(&self, args: &[&str]) -> String {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        self.cli(self.any_port(), &all).await
    }

    /// Runs several commands on one connection to the node on `port` (for example
    /// `SET k v` then `WAIT 1 0`) and returns the raw output of them all.
    pub async fn cli_session(&self, port: u16, commands: &[&[&str]]) -> String {
        redis_cli_session(port, commands)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The temp dir holding the nodes' logs and `nodes-PORT.conf` files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn live(&self) -> impl Iterator<Item = &ClusterProcess> {
        self.nodes.iter().filter(|n| n.server.is_running())
    }

    fn any_port(&self) -> u16 {
        self.live()
            .next()
            .expect("the cluster has no live node")
            .server
            .port
    }

    fn id_of(&self, port: u16) -> String {
        self.nodes
            .iter()
            .find(|n| n.server.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
            .id
            .clone()
    }

    async fn expect_ok(&self, port: u16, args: &[&str]) {
        let out = self.cli(port, args).await;
        assert_eq!(out, "OK", "{args:?} on node {port}");
    }

    async fn cli_ok_line(&self, port: u16, args: &[&str]) -> String {
        let out = self.cli(port, args).await;
        assert!(
            !out.is_empty() && !out.contains(char::is_whitespace),
            "unexpected reply to {args:?} on node {port}: {out:?}"
        );
        out
    }

    /// Polls `check` until it succeeds; panics after [`SETTLE_TIMEOUT`] with the last error
    /// and every live node's view of the cluster.
    async fn wait_until<T>(
        &self,
        what: &str,
        check: impl AsyncFn(&RedisCluster) -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let last_error = match check(self).await {
                Ok(value) => return value,
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!(
                    "timed out after {SETTLE_TIMEOUT:?} waiting for {what}: {last_error}\n{}",
                    self.describe().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Every live node knows every live node, with a connected link and no handshake.
    async fn check_all_known(&self) -> Result<(), String> {
        let ids: HashSet<&str> = self.live().map(|n| n.id.as_str()).collect();
        for node in self.live() {
            let view = cluster_nodes(node.server.port).await?;
            for id in &ids {
                let line = view
                    .iter()
                    .find(|l| l.id == *id)
                    .ok_or_else(|| format!("node {} does not know {id}", node.server.port))?;
                if !line.is_up() {
                    return Err(format!("node {} sees {}", node.server.port, line.raw));
                }
            }
        }
        Ok(())
    }

    /// Every live node: `cluster_state:ok`, all slots ok, every slot served by a live master
    /// and the same owners as every other live node, no slot open (importing/migrating),
    /// and, for a replica, its replication link up.
    async fn check_healthy(&self) -> Result<(), String> {
        let live: HashSet<&str> = self.live().map(|n| n.id.as_str()).collect();
        let mut reference: Option<(u16, Vec<String>)> = None;
        for node in self.live() {
            let port = node.server.port;
            let info = info_fields(&self.cli(port, &["CLUSTER", "INFO"]).await);
            for (field, want) in [
                ("cluster_state", "ok"),
                ("cluster_slots_assigned", "16384"),
                ("cluster_slots_ok", "16384"),
            ] {
                let got = info.get(field).map(String::as_str).unwrap_or("?");
                if got != want {
                    return Err(format!("node {port} reports {field}:{got}"));
                }
            }
            let view = cluster_nodes(port).await?;
            if let Some(open) = view.iter().find(|l| l.has_open_slots()) {
                return Err(format!("node {port} has an open slot: {}", open.raw));
            }
            let owners = slot_owners(&view);
            if let Some(slot) = owners.iter().position(|o| !live.contains(o.as_str())) {
                return Err(format!(
                    "node {port} sees slot {slot} served by {:?}, not a live master",
                    owners[slot]
                ));
            }
            match &reference {
                None => reference = Some((port, owners)),
                Some((other, theirs)) => {
                    if let Some(slot) = (0..owners.len()).find(|&s| owners[s] != theirs[s]) {
                        return Err(format!(
                            "nodes {port} and {other} disagree on slot {slot}: {} vs {}",
                            owners[slot], theirs[slot]
                        ));
                    }
                }
            }
            let me = view
                .iter()
                .find(|l| l.is_myself())
                .ok_or_else(|| format!("node {port} does not list itself"))?;
            if !me.is_master() {
                let replication = info_fields(&self.cli(port, &["INFO", "replication"]).await);
                let link = replication.get("master_link_status").map(String::as_str);
                if link != Some("up") {
                    return Err(format!("replica {port} has master_link_status {link:?}"));
                }
            }
        }
        Ok(())
    }

    /// Every live node sees each replica in `expected` (replica id -> master id) as a
    /// replica of its master.
    async fn check_replication(&self, expected: &HashMap<String, String>) -> Result<(), String> {
        for node in self.live() {
            let view = cluster_nodes(node.server.port).await?;
            for (replica, master) in expected {
                let line = view.iter().find(|l| &l.id == replica);
                let ok = line.is_some_and(|l| {
                    l.flags.iter().any(|f| f == "slave") && l.master_id.as_ref() == Some(master)
                });
                if !ok {
                    return Err(format!(
                        "node {} does not yet see {replica} replicating {master}",
                        node.server.port
                    ));
                }
            }
        }
        Ok(())
    }

    /// The port of the live master that every live node sees serving `slot`.
    async fn agreed_owner(&self, slot: u16) -> Result<u16, String> {
        let mut owner = None;
        for node in self.live() {
            let view = cluster_nodes(node.server.port).await?;
            let id = slot_owners(&view).swap_remove(usize::from(slot));
            match &owner {
                None => owner = Some(id),
                Some(o) if *o == id => {}
                Some(o) => return Err(format!("nodes disagree on slot {slot}: {o} vs {id}")),
            }
        }
        let owner = owner.ok_or("the cluster has no live node")?;
        self.live()
            .find(|n| n.id == owner)
            .map(|n| n.server.port)
            .ok_or_else(|| format!("slot {slot} is served by {owner}, which is not live"))
    }

    /// Every live node's `CLUSTER NODES`, for failure messages.
    async fn describe(&self) -> String {
        let mut out = format!("cluster dir: {}\n", self.dir.path().display());
        for node in &self.nodes {
            let port = node.server.port;
            if !node.server.is_running() {
                out.push_str(&format!("node {port}: killed\n"));
                continue;
            }
            let view = redis_cli(port, &["CLUSTER", "NODES"])
                .await
                .unwrap_or_else(|e| e);
            out.push_str(&format!("node {port} sees:\n{view}\n"));
        }
        out
    }
}

/// Starts one cluster-enabled node on fresh client and bus ports (retrying when a port was
/// taken meanwhile).
async fn start_cluster_node(dir: &Path, used: &mut HashSet<u16>) -> ClusterProcess {
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = fresh_port(used);
        let bus_port = fresh_port(used);
        let d = dir.display();
        let options = [
            ("--port", port.to_string()),
            ("--bind", "127.0.0.1".into()),
            ("--cluster-enabled", "yes".into()),
            ("--cluster-port", bus_port.to_string()),
            ("--cluster-config-file", format!("{d}/nodes-{port}.conf")),
            ("--cluster-node-timeout", NODE_TIMEOUT_MS.to_string()),
            ("--cluster-announce-ip", "127.0.0.1".into()),
            ("--cluster-replica-validity-factor", "0".into()),
            ("--cluster-allow-reads-when-down", "yes".into()),
            ("--repl-diskless-sync-delay", "0".into()),
            ("--appendonly", "no".into()),
            ("--save", String::new()),
            ("--dir", d.to_string()),
            ("--logfile", format!("{d}/node-{port}.log")),
        ];
        let argv: Vec<String> = options
            .into_iter()
            .flat_map(|(option, value)| [option.to_string(), value])
            .collect();
        match Server::spawn(dir, &format!("node-{port}"), port, &argv).await {
            Ok(server) => {
                return ClusterProcess {
                    server,
                    bus_port,
                    id: String::new(),
                };
            }
            Err(e) => last_error = e,
        }
    }
    panic!("could not start a cluster node: {last_error}");
}

/// One master with one replica, watched by three sentinels (quorum 2). Killed on drop.
pub struct RedisSentinel {
    sentinels: Vec<Server>,
    /// The initial master, then the initial replica.
    data: Vec<Server>,
    // Declared last: dropped (removed) after every process is dead.
    dir: TempDir,
}

impl RedisSentinel {
    /// Starts a master, a replica of it (`--replicaof`), waits for their replication link,
    /// then starts three sentinels (`sentinel monitor mymaster 127.0.0.1 PORT 2`,
    /// `down-after-milliseconds 1000`, `failover-timeout 3000`) and waits until each of them
    /// knows the master, the replica and the two other sentinels (`SENTINEL CKQUORUM`).
    pub async fn start() -> RedisSentinel {
        ensure_installed().await;
        let dir = TempDir::new("sentinel");
        let mut used = HashSet::new();
        let master = start_data_node(dir.path(), &mut used, None).await;
        let replica = start_data_node(dir.path(), &mut used, Some(master.port)).await;
        let mut topology = RedisSentinel {
            sentinels: Vec::new(),
            data: vec![master, replica],
            dir,
        };
        let (master_port, replica_port) = (topology.data[0].port, topology.data[1].port);
        topology
            .wait_until("the replica to sync with the master", async |t| {
                t.check_replica_synced(replica_port, master_port).await
            })
            .await;
        for _ in 0..3 {
            let sentinel = start_sentinel(topology.dir.path(), &mut used, master_port).await;
            topology.sentinels.push(sentinel);
        }
        topology
            .wait_until(
                "the sentinels to know the master, replica and each other",
                async |t| t.check_discovered(master_port, replica_port).await,
            )
            .await;
        topology
    }

    /// `127.0.0.1:PORT` of every live sentinel.
    pub fn sentinels(&self) -> Vec<String> {
        self.sentinel_ports()
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// Ports of every live sentinel.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels
            .iter()
            .filter(|s| s.is_running())
            .map(|s| s.port)
            .collect()
    }

    /// The name the sentinels monitor the master under (`mymaster`).
    pub fn master_name(&self) -> &'static str {
        SENTINEL_MASTER_NAME
    }

    /// Ports of the live data nodes (master and replica), initial master first.
    pub fn data_ports(&self) -> Vec<u16> {
        self.data
            .iter()
            .filter(|s| s.is_running())
            .map(|s| s.port)
            .collect()
    }

    /// The master's port, as the first live sentinel reports it
    /// (`SENTINEL get-master-addr-by-name mymaster`).
    pub async fn master_port(&self) -> u16 {
        let sentinel = *self.sentinel_ports().first().expect("no live sentinel");
        master_addr(sentinel)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// SIGKILLs the current master and returns its port. Follow with
    /// [`RedisSentinel::wait_failover`].
    pub async fn kill_master(&mut self) -> u16 {
        let port = self.master_port().await;
        let server = self
            .data
            .iter_mut()
            .find(|s| s.port == port && s.is_running())
            .unwrap_or_else(|| panic!("the sentinels' master {port} is not a live data node"));
        server.kill();
        port
    }

    /// SIGSTOPs the current replica (it stays connected but acknowledges nothing, so a
    /// WAIT for it lasts its whole timeout) and returns its port. It is SIGKILLed on drop.
    pub async fn freeze_replica(&mut self) -> u16 {
        let master = self.master_port().await;
        let replica = self
            .data
            .iter()
            .find(|s| s.port != master && s.is_running())
            .expect("a live replica");
        let pid = replica.pid().expect("replica pid");
        let status = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("run kill -STOP");
        assert!(status.success(), "kill -STOP {pid} failed");
        replica.port
    }

    /// Waits until every live sentinel reports the same master, other than `old_port`, and
    /// that node answers `ROLE` as master; returns its port.
    pub async fn wait_failover(&self, old_port: u16) -> u16 {
        self.wait_until(&format!("a failover away from {old_port}"), async |t| {
            let mut reported = None;
            for sentinel in t.sentinel_ports() {
                let port = master_addr(sentinel).await?;
                if port == old_port {
                    return Err(format!("sentinel {sentinel} still reports {old_port}"));
                }
                match reported {
                    None => reported = Some(port),
                    Some(p) if p == port => {}
                    Some(p) => return Err(format!("sentinels report {p} and {port}")),
                }
            }
            let port = reported.ok_or("no live sentinel")?;
            let role = redis_cli(port, &["ROLE"]).await?;
            if role.lines().next() == Some("master") {
                Ok(port)
            } else {
                Err(format!("reported master {port} answers ROLE with {role:?}"))
            }
        })
        .await
    }

    /// Runs one command with `redis-cli` on `port` (a data node or a sentinel) and returns
    /// its trimmed raw output. Panics when `redis-cli` cannot run or connect.
    pub async fn cli(&self, port: u16, args: &[&str]) -> String {
        redis_cli(port, args)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs several commands on one connection to `port`; see [`RedisCluster::cli_session`].
    pub async fn cli_session(&self, port: u16, commands: &[&[&str]]) -> String {
        redis_cli_session(port, commands)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The temp dir holding the logs and sentinel configs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn check_replica_synced(&self, replica: u16, master: u16) -> Result<(), String> {
        let info = info_fields(&redis_cli(replica, &["INFO", "replication"]).await?);
        let link = info.get("master_link_status").map(String::as_str);
        if link != Some("up") {
            return Err(format!("replica {replica} has master_link_status {link:?}"));
        }
        let info = info_fields(&redis_cli(master, &["INFO", "replication"]).await?);
        let replicas = info.get("connected_slaves").map(String::as_str);
        if replicas != Some("1") {
            return Err(format!("master {master} has connected_slaves {replicas:?}"));
        }
        Ok(())
    }

    async fn check_discovered(&self, master: u16, replica: u16) -> Result<(), String> {
        let name = SENTINEL_MASTER_NAME;
        for sentinel in self.sentinel_ports() {
            let port = master_addr(sentinel).await?;
            if port != master {
                return Err(format!("sentinel {sentinel} reports master {port}"));
            }
            let replicas = redis_cli(sentinel, &["SENTINEL", "REPLICAS", name]).await?;
            let known = sentinel_entries(&replicas).into_iter().any(|r| {
                r.get("port") == Some(&replica.to_string())
                    && r.get("flags").map(String::as_str) == Some("slave")
                    && r.get("master-link-status").map(String::as_str) == Some("ok")
            });
            if !known {
                return Err(format!("sentinel {sentinel} knows replicas {replicas:?}"));
            }
            let quorum = redis_cli(sentinel, &["SENTINEL", "CKQUORUM", name]).await?;
            if !quorum.starts_with("OK 3 usable") {
                return Err(format!("sentinel {sentinel}: CKQUORUM says {quorum:?}"));
            }
        }
        Ok(())
    }

    async fn wait_until<T>(
        &self,
        what: &str,
        check: impl AsyncFn(&RedisSentinel) -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let last_error = match check(self).await {
                Ok(value) => return value,
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!(
                    "timed out after {SETTLE_TIMEOUT:?} waiting for {what}: {last_error} \
                     (logs in {})",
                    self.dir.path().display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Starts a plain (non-cluster) `redis-server`, a replica of `replica_of` if given.
async fn start_data_node(dir: &Path, used: &mut HashSet<u16>, replica_of: Option<u16>) -> Server {
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = fresh_port(used);
        let d = dir.display().to_string();
        let mut argv: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--repl-diskless-sync-delay",
            "0",
            "--dir",
            &d,
            "--logfile",
            &format!("{d}/redis-{port}.log"),
        ]
        .map(String::from)
        .to_vec();
        if let Some(master) = replica_of {
            argv.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
        }
        match Server::spawn(dir, &format!("redis-{port}"), port, &argv).await {
            Ok(server) => return server,
            Err(e) => last_error = e,
        }
    }
    panic!("could not start redis-server: {last_error}");
}

/// Writes a sentinel config monitoring the master on `master` and starts
/// `redis-server CONF --sentinel`.
async fn start_sentinel(dir: &Path, used: &mut HashSet<u16>, master: u16) -> Server {
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = fresh_port(used);
        let d = dir.display();
        let name = SENTINEL_MASTER_NAME;
        let conf = dir.join(format!("sentinel-{port}.conf"));
        let text = format!(
            "port {port}\n\
             bind 127.0.0.1\n\
             daemonize no\n\
             dir {d}\n\
             logfile {d}/sentinel-{port}.log\n\
             sentinel monitor {name} 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds {name} {NODE_TIMEOUT_MS}\n\
             sentinel failover-timeout {name} 3000\n\
             sentinel parallel-syncs {name} 1\n"
        );
        std::fs::write(&conf, text).expect("write sentinel config");
        let argv = [conf.display().to_string(), "--sentinel".into()];
        match Server::spawn(dir, &format!("sentinel-{port}"), port, &argv).await {
            Ok(server) => return server,
            Err(e) => last_error = e,
        }
    }
    panic!("could not start redis-server --sentinel: {last_error}");
}

/// The master port a sentinel reports for [`SENTINEL_MASTER_NAME`].
async fn master_addr(sentinel: u16) -> Result<u16, String> {
    let args = ["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER_NAME];
    let out = redis_cli(sentinel, &args).await?;
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    match lines.as_slice() {
        [_, port] => port
            .parse()
            .map_err(|_| format!("sentinel {sentinel}: bad master address {out:?}")),
        _ => Err(format!("sentinel {sentinel}: no master address ({out:?})")),
    }
}

/// Parses the raw output of `SENTINEL REPLICAS`/`SENTINELS` (a flat list of field, value
/// lines; each entry starts with `name`) into one map per entry.
fn sentinel_entries(out: &str) -> Vec<HashMap<String, String>> {
    let lines: Vec<&str> = out.lines().collect();
    let mut entries: Vec<HashMap<String, String>> = Vec::new();
    for pair in lines.chunks(2) {
        let [field, value] = pair else { break };
        if *field == "name" || entries.is_empty() {
            entries.push(HashMap::new());
        }
        if let Some(entry) = entries.last_mut() {
            entry.insert(field.to_string(), value.to_string());
        }
    }
    entries
}

/// A `redis-server` child (data node, cluster node or sentinel), SIGKILLed on drop.
struct Server {
    port: u16,
    child: Option<Child>,
}

impl Server {
    /// Spawns `redis-server argv...` (stdout and stderr to `dir/name.out`) and waits until
    /// the process answers on `port` as itself (`INFO server` shows its pid).
    async fn spawn(dir: &Path, name: &str, port: u16, argv: &[String]) -> Result<Server, String> {
        let out_path = dir.join(format!("{name}.out"));
        let out = File::create(&out_path).map_err(|e| format!("create {name}.out: {e}"))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("clone {name}.out: {e}"))?;
        let child = std::process::Command::new("redis-server")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        let pid = child.id();
        let mut server = Server {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + SPAWN_TIMEOUT;
        loop {
            let exited = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                server.child = None;
                let output = std::fs::read_to_string(&out_path).unwrap_or_default();
                return Err(format!("{name} exited with {status}: {}", output.trim()));
            }
            if let Ok(info) = redis_cli(port, &["INFO", "server"]).await {
                let fields = info_fields(&info);
                if fields.get("process_id") == Some(&pid.to_string()) {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{name} did not answer on port {port} within {SPAWN_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, then reap the process.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh directory under the system temp dir; removed on drop unless the test panicked
/// (then its path is printed, to read the logs).
struct TempDir(PathBuf);

impl TempDir {
    fn new(kind: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!("roomcast-redis-{kind}-{}-{n}-{nanos}", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create a temp dir for redis");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("redis logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A free loopback port not handed out before to this topology.
fn fresh_port(used: &mut HashSet<u16>) -> u16 {
    loop {
        let port = super::free_port();
        if used.insert(port) {
            return port;
        }
    }
}

/// `redis-cli -h 127.0.0.1 -p PORT ARGS...`: trimmed stdout, or an error when `redis-cli`
/// cannot run or fails (cannot connect).
async fn redis_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("run redis-cli (apt-get install -y redis-tools): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "redis-cli -p {port} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `commands` through one `redis-cli` connection (commands fed on stdin, each argument
/// quoted), returning the raw output of them all.
async fn redis_cli_session(port: u16, commands: &[&[&str]]) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let mut script = String::new();
    for command in commands {
        let quoted: Vec<String> = command.iter().map(|a| quote(a)).collect();
        script.push_str(&quoted.join(" "));
        script.push('\n');
    }
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("run redis-cli (apt-get install -y redis-tools): {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(script.as_bytes())
        .await
        .map_err(|e| format!("write to redis-cli: {e}"))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("wait for redis-cli: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "redis-cli -p {port} session {commands:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Quotes one argument for `redis-cli`'s line parser (`sdssplitargs`).
fn quote(arg: &str) -> String {
    let mut out = String::from("\"");
    for c in arg.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `field:value` lines of an `INFO`/`CLUSTER INFO` reply.
fn info_fields(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One line of `CLUSTER NODES`.
struct NodeLine {
    raw: String,
    id: String,
    flags: Vec<String>,
    master_id: Option<String>,
    connected: bool,
    /// Served slot ranges (inclusive); open-slot markers (`[slot->-id]`) are not included.
    slots: Vec<(u16, u16)>,
    open_slots: bool,
}

impl NodeLine {
    fn parse(line: &str) -> Option<NodeLine> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return None;
        }
        let mut slots = Vec::new();
        let mut open_slots = false;
        for token in &fields[8..] {
            if token.starts_with('[') {
                open_slots = true;
            } else if let Some((a, b)) = token.split_once('-') {
                slots.push((a.parse().ok()?, b.parse().ok()?));
            } else {
                let s = token.parse().ok()?;
                slots.push((s, s));
            }
        }
        Some(NodeLine {
            raw: line.to_string(),
            id: fields[0].to_string(),
            flags: fields[2].split(',').map(String::from).collect(),
            master_id: (fields[3] != "-").then(|| fields[3].to_string()),
            connected: fields[7] == "connected",
            slots,
            open_slots,
        })
    }

    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn is_myself(&self) -> bool {
        self.has_flag("myself")
    }

    fn is_master(&self) -> bool {
        self.has_flag("master")
    }

    /// Known, reachable and not suspected to have failed.
    fn is_up(&self) -> bool {
        (self.connected || self.is_myself())
            && !["handshake", "noaddr", "fail", "fail?"]
                .iter()
                .any(|f| self.has_flag(f))
    }

    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }

    fn has_open_slots(&self) -> bool {
        self.open_slots
    }
}

/// `CLUSTER NODES` as `port` sees it.
async fn cluster_nodes(port: u16) -> Result<Vec<NodeLine>, String> {
    let out = redis_cli(port, &["CLUSTER", "NODES"]).await?;
    out.lines()
        .map(|l| NodeLine::parse(l).ok_or_else(|| format!("node {port}: bad line {l:?}")))
        .collect()
}

/// For each slot, the id of the master serving it in `view` (empty when none).
fn slot_owners(view: &[NodeLine]) -> Vec<String> {
    let mut owners = vec![String::new(); usize::from(REDIS_CLUSTER_SLOTS)];
    for line in view.iter().filter(|l| l.is_master()) {
        for &(a, b) in &line.slots {
            for slot in a..=b {
                owners[usize::from(slot)] = line.id.clone();
            }
        }
    }
    owners
}

async fn ensure_installed() {
    for (tool, package) in [
        ("redis-server", "redis-server"),
        ("redis-cli", "redis-tools"),
    ] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if !matches!(found, Ok(s) if s.success()) {
            panic!(
                "{tool} not found in PATH: these tests run a real Redis \
                 (install it with `apt-get install -y {package}`)"
            );
        }
    }
}
