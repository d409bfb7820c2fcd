//! A real `redis-server` child process per test, on a free loopback port, with helpers to
//! stop it, restart it empty on the same port (fault injection) and run commands against it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long a freshly spawned `redis-server` may take to answer `PING`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// A `redis-server` run by the test: no persistence, loopback only. Killed on drop.
pub struct RedisServer {
    pub port: u16,
    /// `redis://127.0.0.1:PORT`, ready for `cfg.redis.url` / `ROOMCAST_REDIS__URL`.
    pub url: String,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` from `PATH` on a free loopback port and waits until it answers
    /// `PING`. Panics with a clear message when `redis-server` is not installed.
    pub async fn start() -> RedisServer {
        ensure_installed().await;
        let mut last_error = String::new();
        // A free port can be taken by someone else between probing and binding: retry.
        for _ in 0..5 {
            let port = super::free_port();
            match spawn(port).await {
                Ok(child) => {
                    return RedisServer {
                        port,
                        url: format!("redis://127.0.0.1:{port}"),
                        child: Some(child),
                    };
                }
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Stops the server if it runs, then starts an empty one on the same port and waits
    /// until it answers `PING`.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut last_error = String::new();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            match spawn(self.port).await {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) => last_error = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "could not restart redis-server on port {}: {last_error}",
            self.port
        );
    }

    /// Freezes the server (SIGSTOP): its connections stay open and it answers nothing
    /// until [`RedisServer::thaw`].
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("redis-server is running");
        let status = std::process::Command::new("kill")
            .args([which, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {which} {pid} failed");
    }

    /// Whether the server process is running (not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Runs one command with `redis-cli` and returns its trimmed raw output
    /// (for example `redis_cmd(&["PUBSUB", "NUMSUB", "roomcast:{r}:ch"])`).
    pub async fn redis_cmd(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("failed to run redis-cli (is it installed? apt-get install -y redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Number of subscribers of `channel`, summed over every connection to this Redis.
    pub async fn numsub(&self, channel: &str) -> i64 {
        let out = self.redis_cmd(&["PUBSUB", "NUMSUB", channel]).await;
        let count = out.lines().last().unwrap_or_default().trim();
        count
            .parse()
            .unwrap_or_else(|_| panic!("unexpected PUBSUB NUMSUB output: {out:?}"))
    }

    /// Polls `PUBSUB NUMSUB channel` until it equals `expected` (panics after 15 s).
    pub async fn wait_numsub(&self, channel: &str, expected: i64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let now = self.numsub(channel).await;
            if now == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PUBSUB NUMSUB {channel} stayed at {now}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A connected fred client, for assertions that need more than `redis_cmd`.
    pub async fn client(&self) -> fred::prelude::Client {
        use fred::prelude::*;
        let config = Config::from_url(&self.url).expect("valid redis url");
        let client = Builder::from_config(config)
            .build()
            .expect("build fred client");
        client.init().await.expect("connect fred client to redis");
        client
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

async fn ensure_installed() {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if !matches!(found, Ok(s) if s.success()) {
        panic!(
            "redis-server not found in PATH: these tests run a real Redis \
             (install it with `apt-get install -y redis-server`)"
        );
    }
}

/// Spawns `redis-server` on `port` and waits until it answers `PING`.
async fn spawn(port: u16) -> Result<Child, String> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn redis-server: {e}"))?;
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server on port {port} exited with {status}"));
        }
        if ping(port).await {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            return Err(format!(
                "redis-server on port {port} did not answer PING within {STARTUP_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a Redis on `port` answers `PING` with `+PONG`.
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}
