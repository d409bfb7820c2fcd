//! Behaviour of the real binary on SIGTERM: readiness flips first, then sessions are closed
//! with 1001 `draining` spread over `drain.spread`, then the process exits 0; clients of a
//! draining replica resume on another one without gap or duplicate; a second SIGTERM exits
//! at once. Also the `config` subcommand: `--check` exits 64 naming the key (a drain
//! spread longer than the timeout too), and the
//! printed configuration redacts the Redis password, API keys and the hook secret; a port in use names its key; text
//! logs to a pipe carry no colour codes.

mod common;
mod ops_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;
use ops_common::*;

const DELAY: u64 = 1;
const SPREAD: u64 = 3;
const TIMEOUT: u64 = 10;

fn drain_env() -> [(&'static str, &'static str); 3] {
    [
        ("ROOMCAST_DRAIN__PROPAGATION_DELAY", "1s"),
        ("ROOMCAST_DRAIN__SPREAD", "3s"),
        ("ROOMCAST_DRAIN__TIMEOUT", "10s"),
    ]
}

/// How long the process may take to exit after SIGTERM: the drain bounds plus a margin.
fn exit_bound() -> Duration {
    Duration::from_secs(DELAY + SPREAD + TIMEOUT + 10)
}

/// SIGTERM to a replica with 20 clients: `/readyz` turns 503 `draining` while every client
/// is still open; then each client gets close 1001 `draining`, the closes spread over the
/// window (first and last at least 1.5 s apart with a 3 s spread); the process exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_flips_readiness_then_closes_sessions_1001_spread_then_exits_0() {
    let mut node = ProcessNode::start(None, "drain-solo", &drain_env()).await;
    let closes: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut client = node.client().await;
        client.join("hall", &format!("user{i}")).await;
        let closes = closes.clone();
        tasks.push(tokio::spawn(async move {
            let closed = client.wait_closed(Duration::from_secs(60)).await;
            let at = Instant::now();
            closes.lock().expect("lock").push(at);
            (at, closed.close)
        }));
    }
    assert_ready(&readyz(&node.admin_url).await, &node.admin_url);

    node.signal_term().await;
    let unready = wait_readyz(&node.admin_url, Duration::from_secs(10), "503", |a| {
        a.0 != 200
    })
    .await;
    let unready_at = Instant::now();
    assert_eq!(unready_reason(&unready), "draining", "{unready:?}");
    assert!(
        closes.lock().expect("lock").is_empty(),
        "sessions were closed before readiness turned false"
    );

    let mut times = Vec::new();
    for task in tasks {
        let (at, close) = task.await.expect("client task");
        assert_eq!(close, Some((1001, "draining".to_string())));
        assert!(
            at > unready_at,
            "a session closed before readiness was seen false"
        );
        times.push(at);
    }
    let first = times.iter().min().expect("closes");
    let last = times.iter().max().expect("closes");
    assert!(
        last.duration_since(*first) >= Duration::from_millis(1500),
        "closes not spread over drain.spread = {SPREAD}s: first to last {:?}",
        last.duration_since(*first)
    );
    let status = node.wait(exit_bound()).await;
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

const ROOM: &str = "relay";

/// What one follower saw: message ids in order, and the `joined` of its resume.
struct Followed {
    name: String,
    seen: Vec<String>,
    resumed: Value,
}

/// Reads `ROOM` on `client` until the message `end`; on close 1001 it reconnects to
/// `fallback`, re-joins with `since` = the last id seen (or the join's `offset`) and goes on.
async fn follow(
    mut client: Client,
    name: String,
    offset: String,
    fallback: String,
    resumed_tx: tokio::sync::mpsc::UnboundedSender<String>,
) -> Followed {
    let mut cursor = offset;
    let mut seen = Vec::new();
    let mut resumed = Value::Null;
    let handle = |v: Value, seen: &mut Vec<String>, cursor: &mut String| -> bool {
        if v["type"] != "message" {
            return false;
        }
        assert_eq!(v["room"], ROOM, "{name}: {v}");
        let id = id_of(&v);
        seen.push(id.clone());
        *cursor = id;
        v["text"] == "end"
    };
    loop {
        match client.read_incoming(Duration::from_secs(30)).await {
            Some(Incoming::Json(v)) => {
                if handle(v, &mut seen, &mut cursor) {
                    break;
                }
            }
            Some(Incoming::Close(close)) if resumed.is_null() => {
                assert_eq!(close, Some((1001, "draining".to_string())), "{name}");
                client = Client::connect(&fallback).await;
                assert_eq!(client.node_id(), "drain-b", "{name} reconnected elsewhere");
                resumed = client.join_since(ROOM, &name, &cursor).await;
                assert_eq!(resumed["recovered"], true, "{name}: {resumed}");
                resumed_tx.send(name.clone()).expect("main task");
                // Frames read while waiting for `joined` (none are messages of ROOM, which
                // follow the `joined`), then on with the socket.
                let mut ended = false;
                while let Some(v) = client.try_next_json(Duration::ZERO).await {
                    ended |= handle(v, &mut seen, &mut cursor);
                }
                if ended {
                    break;
                }
            }
            other => panic!(
                "{name}: unexpected {other:?} (seen {} messages)",
                seen.len()
            ),
        }
    }
    Followed {
        name,
        seen,
        resumed,
    }
}

/// Two replicas on Redis; clients of A share a room with a sender on B that sends all the
/// time. SIGTERM A: each A client, closed with 1001, reconnects to B and re-joins with
/// `since` = its cursor; every client sees every acked id exactly once, in order, no gap,
/// with `recovered: true`. A exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn clients_of_a_draining_replica_resume_on_another_without_gap_or_duplicate() {
    let redis = RedisServer::start().await;
    let mut a = ProcessNode::start(Some(&redis), "drain-a", &drain_env()).await;
    let b = ProcessNode::start(Some(&redis), "drain-b", &[]).await;

    let (resumed_tx, mut resumed_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut followers = Vec::new();
    const FOLLOWERS: usize = 8;
    for i in 0..FOLLOWERS {
        let name = format!("reader{i}");
        let mut client = Client::connect(&a.ws_url).await;
        assert_eq!(client.node_id(), "drain-a");
        let joined = client.join(ROOM, &name).await;
        let offset = joined["offset"].as_str().expect("offset").to_string();
        followers.push(tokio::spawn(follow(
            client,
            name,
            offset,
            b.ws_url.clone(),
            resumed_tx.clone(),
        )));
    }

    let mut sender = Client::connect(&b.ws_url).await;
    sender.join(ROOM, "sender").await;
    let stop = Arc::new(AtomicBool::new(false));
    let sending = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut k = 0;
            while !stop.load(Ordering::Acquire) {
                acked.push(id_of(&sender.send(ROOM, &format!("m{k}")).await));
                sender.discard_pending();
                k += 1;
                // ~16 sends/s: under the default limit (20/s), whatever the round trip.
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            acked.push(id_of(&sender.send(ROOM, "end").await));
            acked
        })
    };

    tokio::time::sleep(Duration::from_millis(500)).await;
    a.signal_term().await;
    let deadline = Instant::now() + Duration::from_secs(DELAY + SPREAD + TIMEOUT + 20);
    for _ in 0..FOLLOWERS {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, resumed_rx.recv())
            .await
            .expect("every client of A resumes on B")
            .expect("a follower");
    }
    // Keep the messages flowing a little after the last resume, then end.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let acked = sending.await.expect("sender");
    assert_strictly_increasing(&acked);
    assert!(
        acked.len() > 20,
        "too few messages to mean anything: {}",
        acked.len()
    );

    for follower in followers {
        let f = follower.await.expect("follower");
        assert_eq!(f.resumed["recovered"], true, "{}: {}", f.name, f.resumed);
        assert_strictly_increasing(&f.seen);
        let missing: Vec<&String> = acked.iter().filter(|id| !f.seen.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "{} missed {} of {} messages: {missing:?}",
            f.name,
            missing.len(),
            acked.len()
        );
        assert_eq!(
            f.seen, acked,
            "{}: not exactly the sender's acked ids",
            f.name
        );
    }
    let status = a.wait(exit_bound()).await;
    assert_eq!(status.code(), Some(0), "replica A exit status {status:?}");
}

/// A second SIGTERM during a long drain makes the process exit at once, with status 130,
/// long before the drain would have ended.
#[tokio::test(flavor = "multi_thread")]
async fn second_sigterm_during_drain_exits_at_once_with_130() {
    let mut node = ProcessNode::start(
        None,
        "stubborn",
        &[
            ("ROOMCAST_DRAIN__PROPAGATION_DELAY", "120s"),
            ("ROOMCAST_DRAIN__TIMEOUT", "120s"),
        ],
    )
    .await;
    let mut client = node.client().await;
    client.join("hall", "patient").await;

    node.signal_term().await;
    let unready = wait_readyz(&node.admin_url, Duration::from_secs(10), "503", |a| {
        a.0 != 200
    })
    .await;
    assert_eq!(unready_reason(&unready), "draining", "{unready:?}");
    // Let the signal handler get back to waiting for the next signal.
    tokio::time::sleep(Duration::from_millis(300)).await;

    node.signal_term().await;
    let status = node.wait(Duration::from_secs(15)).await;
    assert_eq!(
        status.code(),
        Some(130),
        "expected the process to exit by itself with status 130 (docs/operations.md), got {status:?}"
    );
}

/// A scratch directory for config files, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "roomcast-ops-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write config file");
        path.to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `roomcast config --check FILE` exits 0 for a good file, and 64 naming the offending key
/// for a bad value or a value of the wrong type.
#[tokio::test(flavor = "multi_thread")]
async fn config_check_exits_64_naming_the_bad_key() {
    let dir = TempDir::new("check");
    let good = dir.file(
        "good.toml",
        "[redis]\nurl = \"redis://127.0.0.1:6379\"\n\n[drain]\npropagation_delay = \"5s\"\n",
    );
    let out = run_binary(&["config", "--check", &good], &[], Duration::from_secs(30)).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "good file refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for (name, text, key) in [
        (
            "zero.toml",
            "[limits]\nmax_text_bytes = 0\n",
            "limits.max_text_bytes",
        ),
        (
            "type.toml",
            "[drain]\ntimeout = \"soon\"\n",
            "drain.timeout",
        ),
    ] {
        let path = dir.file(name, text);
        let out = run_binary(&["config", "--check", &path], &[], Duration::from_secs(30)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        assert!(
            stderr.contains(key),
            "{name}: the error does not name {key}: {stderr}"
        );
    }
}

/// `roomcast config` prints the effective configuration as TOML (file and environment
/// applied) with the Redis password redacted, from `redis.password` and from the URL.
#[tokio::test(flavor = "multi_thread")]
async fn config_prints_effective_toml_with_the_redis_password_redacted() {
    let dir = TempDir::new("print");
    let file = dir.file("roomcast.toml", "[redis]\nprefix = \"chat\"\n");
    let out = run_binary(
        &["config", "--config", &file],
        &[
            ("ROOMCAST_REDIS__PASSWORD", "hunter2"),
            ("ROOMCAST_REDIS__URL", "redis://:hunter2@127.0.0.1:6390/0"),
            ("ROOMCAST_LIMITS__MAX_TEXT_BYTES", "777"),
            (
                "ROOMCAST_API__KEYS",
                "api-key-hunter2-0000000,api-key-hunter2-1111111",
            ),
            ("ROOMCAST_HOOKS__SECRET", "hook-secret-hunter2-000"),
        ],
        Duration::from_secs(30),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        !stdout.contains("hunter2") && !stderr.contains("hunter2"),
        "a secret (Redis password, API key, hook secret) leaked:\n{stdout}\n{stderr}"
    );
    let printed: toml::Table = toml::from_str(&stdout)
        .unwrap_or_else(|e| panic!("`roomcast config` did not print TOML ({e}):\n{stdout}"));
    let redis = printed["redis"].as_table().expect("[redis]");
    assert_eq!(redis["prefix"].as_str(), Some("chat"), "file not applied");
    let password = redis.get("password").and_then(|v| v.as_str());
    assert!(
        password.is_some_and(|p| !p.is_empty()),
        "a set password should show as redacted, not vanish: {redis:?}"
    );
    let url = redis["url"].as_str().expect("redis.url");
    assert!(url.contains("127.0.0.1:6390"), "{url}");
    assert_eq!(
        printed["limits"]["max_text_bytes"].as_integer(),
        Some(777),
        "environment not applied"
    );
    let keys = printed["api"]["keys"].as_array().expect("api.keys");
    assert_eq!(keys.len(), 2, "both keys shown, redacted: {keys:?}");
}

/// `roomcast config --check` refuses a `drain.spread` longer than `drain.timeout` (the
/// chart refuses it too: sessions still open at the deadline would be cut), naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn config_check_refuses_a_drain_spread_longer_than_the_timeout() {
    let dir = TempDir::new("spread");
    let path = dir.file(
        "spread.toml",
        "[drain]\nspread = \"30s\"\ntimeout = \"20s\"\n",
    );
    let out = run_binary(&["config", "--check", &path], &[], Duration::from_secs(30)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("drain.spread"), "{stderr}");
}

/// A table name the `config` crate would read as an array index (`i[4088888888]`, found by
/// the config fuzz target: the process aborted allocating 392 GB) is refused as not a
/// configuration key, exit 64, and so is a quoted dotted key.
#[tokio::test(flavor = "multi_thread")]
async fn config_check_refuses_a_key_that_is_not_a_plain_name() {
    let dir = TempDir::new("badkey");
    for (name, text) in [
        ("index.toml", "['i[4088888888]']\n"),
        ("dotted.toml", "\"redis.url\" = \"redis://x\"\n"),
    ] {
        let path = dir.file(name, text);
        let out = run_binary(&["config", "--check", &path], &[], Duration::from_secs(30)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        assert!(
            stderr.contains("not a configuration key"),
            "{name}: {stderr}"
        );
    }
}

/// A port already in use is reported with the key to change (and its environment
/// variable), and text logs written to a pipe or file carry no ANSI colour codes.
#[tokio::test(flavor = "multi_thread")]
async fn a_port_in_use_names_its_key_and_text_logs_to_a_file_have_no_colour() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = run_binary(
        &["serve"],
        &[
            ("ROOMCAST_SERVER__LISTEN", addr.as_str()),
            ("ROOMCAST_ADMIN__LISTEN", "127.0.0.1:0"),
            ("ROOMCAST_LOG__FORMAT", "text"),
            ("RUST_LOG", "info"),
        ],
        Duration::from_secs(30),
    )
    .await;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{output}");
    assert!(output.contains(&addr), "{output}");
    assert!(
        output.contains("server.listen") && output.contains("ROOMCAST_SERVER__LISTEN"),
        "the error does not name the key: {output}"
    );
    assert!(
        !output.contains('\u{1b}'),
        "colour codes in a log that is not a terminal: {output:?}"
    );
}
