//! Gateways under test: `Node` runs `roomcast::run` in-process on port 0, `ProcessNode` runs
//! the real binary as a child process, `Cluster` is one bus with its replicas.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Client, RedisCluster, RedisServer, wait_ready};

/// How long a node may take to become ready (bus connected).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A test configuration: the given bus, short presence timings (ttl 2 s, refresh 300 ms),
/// short drain times and rate limits (per connection and per client address) high enough
/// that tests which blast messages or open many connections are not refused (tests of the
/// limits lower them).
pub fn node_config(redis: Option<&RedisServer>, node_id: &str) -> roomcast::Config {
    let mut cfg = roomcast::Config::default();
    cfg.node.id = Some(node_id.to_string());
    cfg.redis.url = redis.map(|r| r.url.clone());
    cfg.presence.ttl = Duration::from_secs(2);
    cfg.presence.refresh = Duration::from_millis(300);
    cfg.drain.propagation_delay = Duration::ZERO;
    cfg.drain.spread = Duration::from_millis(200);
    cfg.drain.timeout = Duration::from_secs(5);
    cfg.limits.messages_per_second = 100_000;
    cfg.limits.burst = 100_000;
    // Every test client comes from 127.0.0.1: per-address limits out of the way (the edge
    // tests set the ones they test).
    cfg.limits.connections_per_ip = 1_000_000;
    cfg.limits.connects_per_second_per_ip = 1_000_000;
    cfg
}

/// A gateway running in this test process (`roomcast::run`) on loopback port 0.
pub struct Node {
    /// Client listener (`/ws`, `/`, `/healthz`, `/readyz`).
    pub addr: SocketAddr,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin_addr: SocketAddr,
    /// `ws://ADDR/ws`
    pub ws_url: String,
    /// `http://ADDR`
    pub http_url: String,
    /// `http://ADMIN_ADDR`
    pub admin_url: String,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), roomcast::Error>>>,
}

impl Node {
    /// Starts a node and waits until its `/readyz` answers 200.
    pub async fn start(cfg: roomcast::Config) -> Node {
        let node = Node::start_unready(cfg).await;
        node.wait_ready().await;
        node
    }

    /// Starts a node without waiting for readiness.
    pub async fn start_unready(cfg: roomcast::Config) -> Node {
        let client = TcpListener::bind("127.0.0.1:0").await.expect("bind client");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let addr = client.local_addr().expect("client addr");
        let admin_addr = admin.local_addr().expect("admin addr");
        let shutdown = CancellationToken::new();
        let listeners = roomcast::Listeners { client, admin };
        let handle = tokio::spawn(roomcast::run(listeners, cfg, shutdown.clone()));
        Node {
            addr,
            admin_addr,
            ws_url: format!("ws://{addr}/ws"),
            http_url: format!("http://{addr}"),
            admin_url: format!("http://{admin_addr}"),
            shutdown,
            handle: Some(handle),
        }
    }

    /// Waits until `/readyz` on the admin port answers 200.
    pub async fn wait_ready(&self) {
        wait_ready(&self.admin_url, READY_TIMEOUT).await;
    }

    /// The token whose cancellation starts the graceful drain (like SIGTERM).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Cancels the node (graceful drain) and waits for `run` to return (at most 60 s).
    pub async fn shutdown(mut self) -> Result<(), roomcast::Error> {
        self.shutdown.cancel();
        let handle = self.handle.take().expect("node handle");
        match tokio::time::timeout(Duration::from_secs(60), handle).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => panic!("roomcast::run panicked: {join}"),
            Err(_) => panic!("roomcast::run did not return within 60 s of shutdown"),
        }
    }

    /// A WebSocket client connected to this node (its `welcome` already read).
    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// The real `roomcast` binary as a child process, for crashes (SIGKILL) and SIGTERM.
/// Its stdout and stderr are drained in the background; the lines are kept for assertions.
pub struct ProcessNode {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub ws_url: String,
    pub http_url: String,
    pub admin_url: String,
    pub pid: u32,
    child: Child,
    logs: Logs,
}

/// The binary's output lines (stdout and stderr interleaved as read).
#[derive(Clone)]
pub struct Logs {
    lines: Arc<Mutex<Vec<String>>>,
    count: watch::Receiver<usize>,
}

impl Logs {
    /// A copy of every line read so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("log lock").clone()
    }

    /// Waits for a line matching `pred` (looking at every line, old ones included) and
    /// returns it; panics after `timeout` with the lines seen.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let mut count = self.count.clone();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| pred(l)) {
                return line;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, count.changed()).await {
                Ok(Ok(())) => {}
                // Output closed: one last look, then give up.
                Ok(Err(_)) | Err(_) => {
                    if let Some(line) = self.lines().into_iter().find(|l| pred(l)) {
                        return line;
                    }
                    panic!(
                        "no log line for {what} within {timeout:?}; output was:\n{}",
                        self.lines().join("\n")
                    );
                }
            }
        }
    }
}

impl ProcessNode {
    /// Runs `roomcast serve` on loopback port 0 with JSON logs, the given bus and node id and
    /// `extra_env`; waits for the `listening` log line and for `/readyz` to answer 200.
    pub async fn start(
        redis: Option<&RedisServer>,
        node_id: &str,
        extra_env: &[(&str, &str)],
    ) -> ProcessNode {
        let mut env: Vec<(String, String)> = vec![("ROOMCAST_NODE__ID".into(), node_id.into())];
        if let Some(redis) = redis {
            env.push(("ROOMCAST_REDIS__URL".into(), redis.url.clone()));
        }
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let node = ProcessNode::spawn(&["serve"], &env).await;
        wait_ready(&node.admin_url, READY_TIMEOUT).await;
        node
    }

    /// Runs the binary with `args` and `env` (after the loopback-port-0 / JSON-log defaults,
    /// which `env` may override) and waits for its `listening` log line.
    pub async fn spawn(args: &[&str], env: &[(String, String)]) -> ProcessNode {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
        cmd.args(args)
            .env_remove("ROOMCAST_CONFIG")
            .env_remove("RUST_LOG")
            .env("ROOMCAST_SERVER__LISTEN", "127.0.0.1:0")
            .env("ROOMCAST_ADMIN__LISTEN", "127.0.0.1:0")
            .env("ROOMCAST_LOG__FORMAT", "json")
            // Every test client comes from 127.0.0.1 (`env` may lower these).
            .env("ROOMCAST_LIMITS__CONNECTIONS_PER_IP", "1000000")
            .env("ROOMCAST_LIMITS__CONNECTS_PER_SECOND_PER_IP", "1000000")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn the roomcast binary");
        let pid = child.id().expect("child pid");
        let (tx, rx) = watch::channel(0usize);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let tx = Arc::new(tx);
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        spawn_drain(stdout, lines.clone(), tx.clone());
        spawn_drain(stderr, lines.clone(), tx);
        let logs = Logs { lines, count: rx };

        let line = logs
            .wait_for("`listening`", READY_TIMEOUT, |l| {
                listening_addrs(l).is_some()
            })
            .await;
        let (addr, admin_addr) = listening_addrs(&line).expect("listening addresses");
        ProcessNode {
            addr,
            admin_addr,
            ws_url: format!("ws://{addr}/ws"),
            http_url: format!("http://{addr}"),
            admin_url: format!("http://{admin_addr}"),
            pid,
            child,
            logs,
        }
    }

    /// The output lines so far, and a way to wait for more.
    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    /// SIGKILL: the replica crashes without any cleanup. Waits for the process to exit.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill roomcast");
    }

    /// Sends SIGTERM (what Kubernetes sends) with `kill -TERM PID`.
    pub async fn signal_term(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid);
    }

    /// Waits for the process to exit (panics after `timeout`) and returns its status.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for roomcast"),
            Err(_) => panic!(
                "roomcast (pid {}) did not exit within {timeout:?}; output:\n{}",
                self.pid,
                self.logs.lines().join("\n")
            ),
        }
    }

    /// A WebSocket client connected to this node (its `welcome` already read).
    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url).await
    }
}

fn spawn_drain(
    out: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
    tx: Arc<watch::Sender<usize>>,
) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(out).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            let n = {
                let mut lines = lines.lock().expect("log lock");
                lines.push(line);
                lines.len()
            };
            tx.send_replace(n);
        }
    });
}

/// Parses the `listening` JSON log line: `{"fields":{"message":"listening","client":..,"admin":..}}`.
pub fn listening_addrs(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields").unwrap_or(&v);
    let message = fields
        .get("message")
        .or_else(|| v.get("message"))
        .and_then(Value::as_str)?;
    if message != "listening" {
        return None;
    }
    let addr = |key: &str| -> Option<SocketAddr> {
        let raw = fields.get(key).or_else(|| v.get(key))?;
        raw.as_str()?.trim_matches('"').parse().ok()
    };
    Some((addr("client")?, addr("admin")?))
}

/// Runs the binary to completion with `args` and `env` (e.g. `config --check FILE`).
pub async fn run_binary(
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
    cmd.args(args)
        .env_remove("ROOMCAST_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(timeout, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("roomcast {args:?} did not finish within {timeout:?}"))
        .expect("run roomcast")
}

/// Which bus a [`Cluster`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bus {
    /// No Redis: the in-process bus, always a single node.
    Memory,
    /// A fresh `redis-server` shared by every replica.
    Redis,
    /// A fresh Redis Cluster of three masters (no replicas) shared by every replica:
    /// `redis.mode = "cluster"`, sharded pub/sub.
    RedisCluster,
}

/// One bus and its replicas, so one scenario runs on both buses. On the memory bus there is
/// only one node and `node(i)` always answers it; on Redis `node(i)` is replica `i % n`.
pub struct Cluster {
    pub bus: Bus,
    pub redis: Option<RedisServer>,
    pub redis_cluster: Option<RedisCluster>,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Starts the bus and `replicas` nodes (1 on the memory bus), each configured with
    /// [`node_config`] and then `tweak`; waits until every node is ready.
    pub async fn start(
        bus: Bus,
        replicas: usize,
        tweak: impl Fn(&mut roomcast::Config),
    ) -> Cluster {
        let redis = match bus {
            Bus::Redis => Some(RedisServer::start().await),
            Bus::Memory | Bus::RedisCluster => None,
        };
        let redis_cluster = match bus {
            Bus::RedisCluster => Some(RedisCluster::start(3, 0).await),
            Bus::Memory | Bus::Redis => None,
        };
        let count = if bus == Bus::Memory {
            1
        } else {
            replicas.max(1)
        };
        let mut nodes = Vec::with_capacity(count);
        for i in 0..count {
            let mut cfg = node_config(redis.as_ref(), &format!("node-{i}"));
            if let Some(cluster) = &redis_cluster {
                use_cluster(&mut cfg, cluster);
            }
            tweak(&mut cfg);
            nodes.push(Node::start(cfg).await);
        }
        Cluster {
            bus,
            redis,
            redis_cluster,
            nodes,
        }
    }

    /// Replica `i % replicas`.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i % self.nodes.len()]
    }

    /// The Redis Cluster; panics on the other buses.
    pub fn redis_cluster(&self) -> &RedisCluster {
        self.redis_cluster
            .as_ref()
            .expect("this cluster has no Redis Cluster")
    }

    /// The Redis server; panics on the memory bus.
    pub fn redis(&self) -> &RedisServer {
        self.redis.as_ref().expect("this cluster has no Redis")
    }

    /// The Redis server, mutably (stop/restart); panics on the memory bus.
    pub fn redis_mut(&mut self) -> &mut RedisServer {
        self.redis.as_mut().expect("this cluster has no Redis")
    }

    /// A client connected to replica `i % replicas`.
    pub async fn client(&self, i: usize) -> Client {
        Client::connect(&self.node(i).ws_url).await
    }
}

/// Points a node's configuration at a Redis Cluster (`redis.mode = "cluster"`, every
/// live node as a seed).
pub fn use_cluster(cfg: &mut roomcast::Config, cluster: &RedisCluster) {
    cfg.redis.url = None;
    cfg.redis.mode = roomcast::RedisMode::Cluster;
    cfg.redis.nodes = cluster.seeds();
}

/// A tweak that keeps [`node_config`] as it is.
pub fn defaults(_: &mut roomcast::Config) {}
