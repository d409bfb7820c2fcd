//! roomcast-bench: the load generator of roomcast (the `roomcast-bench` binary).
//!
//! It drives one or more gateways like a crowd: N connections spread round-robin over the
//! URLs, R rooms of M members, publishers at a total (optionally stepped) rate. Every
//! message text carries its send time and step, so each delivery gives a latency sample;
//! every member keeps a ledger of the room offsets it received, so the report counts lost
//! and duplicated messages per room. It can also speak Socket.IO v4 to the comparison peer
//! in `benches/peers/socketio`, and sample the CPU time and RSS of the server processes
//! from `/proc`. With `--join-at-once` it opens every connection first and then releases
//! all joins at one instant (a join storm), and reports how long the joins took and how many
//! frames and bytes the servers wrote for them, by frame type. See BENCHMARKS.md.
//!
//! What the roomcast protocol defines (message ids, room names, client frames) comes from
//! `roomcast-protocol`; this crate adds only what a client needs on top: fast borrowed
//! decoding of server frames, the Socket.IO framing, the payload header. It does not
//! depend on the gateway.
//!
//! Layout:
//! - [`wire`]: the two wire protocols and the payload header;
//! - [`net`]: URLs, source addresses, the WebSocket handshake;
//! - [`deflate`]: `--deflate`, permessage-deflate under tungstenite, and the bytes really
//!   received on the wire;
//! - [`conn`]: one simulated user (a task per connection), reconnect and resume;
//! - [`ledger`]: loss / duplicate accounting;
//! - [`stats`]: histograms, counters, `/proc` sampling;
//! - [`report`]: the printed and JSON report.
#![forbid(unsafe_code)]

pub mod conn;
pub mod deflate;
pub mod ledger;
pub mod net;
pub mod report;
pub mod stats;
pub mod wire;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::Rng;
use roomcast_protocol::rules::{MAX_ROOM_CHARS, is_valid_room};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use conn::{ConnSpec, SendCmd, Shared};
use ledger::MemberLedger;
use net::Target;
use report::{
    JoinStorm, JoinStormInput, Report, RoomReport, ServerReport, StepReport, Totals, WatchedCpu,
};
use stats::{MachineSample, Recorder, ServerProbe, WatchPid, process_user_system_ticks};
pub use wire::Protocol;

/// How many members of each room publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Publishers {
    /// Every member.
    All,
    /// The first N members of each room.
    PerRoom(usize),
}

fn parse_publishers(s: &str) -> Result<Publishers, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(Publishers::All);
    }
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (use --rate 0 for an idle run)".into()),
        Ok(n) => Ok(Publishers::PerRoom(n)),
        Err(_) => Err(format!("{s:?} is neither `all` nor a number")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// The command line of `roomcast-bench`: a load generator that measures delivery latency,
/// throughput and loss.
///
/// Example: 2,000 users in 20 rooms over two replicas, publishers at stepped rates:
///   roomcast-bench --url ws://127.0.0.1:8080/ws --url ws://127.0.0.1:8081/ws
///     --connections 2000 --rooms 20 --publishers 5 --rate-steps 100,200,400 --duration 15s
#[derive(clap::Args, Debug)]
// The help text is the binary's (`long_about = None`: not this doc comment).
#[command(
    about = "Drive gateways like a crowd of users and report throughput, latency and loss",
    long_about = None
)]
pub struct BenchArgs {
    /// Gateway WebSocket URL; repeat (or comma-separate) to spread connections round-robin
    /// over several replicas. roomcast: `ws://HOST:PORT/ws` (`/ws` is added when there is no
    /// path); socketio: `ws://HOST:PORT` (the Engine.IO path is added).
    #[arg(long = "url", required = true, value_delimiter = ',')]
    pub urls: Vec<String>,

    /// Wire protocol: roomcast v1, or Socket.IO v4 for the comparison peer.
    #[arg(long, value_enum, default_value_t = Protocol::Roomcast)]
    pub protocol: Protocol,

    /// Number of WebSocket connections (simulated users).
    #[arg(long, short = 'c', default_value_t = 100)]
    pub connections: usize,

    /// Number of rooms.
    #[arg(long, short = 'r', default_value_t = 10)]
    pub rooms: usize,

    /// Members per room [default: connections / rooms, rounded up]. Member slots are dealt
    /// round-robin to connections, so a connection joins rooms*members/connections rooms
    /// (at most the gateway's `limits.max_rooms_per_connection`, 16 by default).
    #[arg(long, short = 'm')]
    pub members: Option<usize>,

    /// Publishers per room: `all` members, or the first N members of each room. The total
    /// rate is shared evenly by all publishers (mind the gateway's per-connection limit,
    /// `limits.messages_per_second`, 20 by default).
    #[arg(long, default_value = "all", value_parser = parse_publishers)]
    pub publishers: Publishers,

    /// Total publish rate over all rooms, messages per second. 0 = idle (connect, join,
    /// hold for --duration).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,

    /// Stepped rates, e.g. `100,200,400`: each step runs for --duration (overrides --rate).
    /// The report has one row per step.
    #[arg(long, value_delimiter = ',')]
    pub rate_steps: Vec<f64>,

    /// How long each rate step publishes.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Skip the remaining rate steps once a step's p99 latency (of what arrived by the end
    /// of the step) exceeds this: the server is saturated, higher rates only pile up.
    #[arg(long, value_parser = parse_duration)]
    pub max_p99: Option<Duration>,

    /// Publish this many messages per step instead of running for --duration.
    #[arg(long)]
    pub messages: Option<u64>,

    /// Size of each message text in bytes (the header needs about 40; the rest is padding).
    #[arg(long, default_value_t = 64)]
    pub size: usize,

    /// Spread the initial connects evenly over this time.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub ramp_up: Duration,

    /// Most connection attempts in progress at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,

    /// Timeout of one connect (TCP + WebSocket handshake).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// How long to wait for every connection to have joined its rooms before publishing.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    pub join_timeout: Duration,

    /// After the last step, wait at most this long for in-flight acks and deliveries (the
    /// wait ends earlier once every send is acked and nothing arrived for 500 ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub settle: Duration,

    /// Keep clients alive across gateway restarts: on close or error, reconnect with
    /// jittered backoff to the next URL and re-join each room with `since` = cursor.
    /// Gaps, duplicates and `recovered: false` are counted.
    #[arg(long)]
    pub resume: bool,

    /// First reconnect delay (doubles per attempt, ±50% jitter).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub backoff: Duration,

    /// Longest reconnect delay.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub backoff_max: Duration,

    /// Local source addresses to connect from, e.g. `127.0.0.1-127.0.0.20` or
    /// `127.0.0.1,127.0.0.2`; `auto` uses one 127.0.0.x per 16,000 connections per loopback
    /// target; `none` lets the kernel choose.
    #[arg(long, default_value = "auto")]
    pub source_ips: String,

    /// PIDs of the server processes (repeat or comma-separate): their CPU time and RSS are
    /// read from /proc before and after each step and reported (CPU seconds per million
    /// deliveries, RSS growth per connection).
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub server_pids: Vec<u32>,

    /// Other processes to account one by one, `LABEL=PID` (repeat or comma-separate), e.g.
    /// each Redis shard: their user and system CPU seconds during each step are reported
    /// per process (`steps[].watched` in the JSON), not added to the server figures.
    #[arg(long = "watch-pid", value_delimiter = ',')]
    pub watch_pids: Vec<WatchPid>,

    /// Prefix of room names (a random run id and the room number follow).
    #[arg(long, default_value = "bench")]
    pub room_prefix: String,

    /// Print one JSON report on stdout instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Exit non-zero when a message was lost or duplicated, a resume was not recovered, a
    /// member never joined, or (with a non-zero rate) nothing was delivered.
    #[arg(long)]
    pub fail_on_loss: bool,

    /// No progress bar (it is also hidden when stdout is not a terminal).
    #[arg(long)]
    pub quiet: bool,

    /// A join storm: open every connection first (WebSocket handshake only), then release
    /// all joins at the same instant. The report's `join_storm` section gives the time from
    /// the release until every connection had its `joined`, the frames and bytes received
    /// from then until the servers fell quiet (by type: joined, presence, members, ...),
    /// and with --server-pid the servers' bytes written (`wchar` of /proc/PID/io) and peak
    /// RSS (VmHWM). roomcast protocol only.
    #[arg(long)]
    pub join_at_once: bool,

    /// --join-at-once: the storm's accounting ends once every connection joined and no
    /// frame arrived for this long (at most --join-timeout after the release).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub storm_quiet: Duration,

    /// Once every connection joined (or gave up), write `{"connected":N,"connections":M}`
    /// to this file: the moment the first step (or the idle hold) starts, for scripts that
    /// measure the servers meanwhile.
    #[arg(long)]
    pub ready_file: Option<std::path::PathBuf>,

    /// Exit non-zero (like --fail-on-loss) when any connection closed during the run, for
    /// runs that must hold every connection open (without --resume a close ends it).
    #[arg(long)]
    pub fail_on_disconnect: bool,

    /// Offer WebSocket permessage-deflate (RFC 7692) in every handshake, as browsers do
    /// (`client_no_context_takeover; server_no_context_takeover`). When the server agrees,
    /// the compressed frames it sends are inflated before they are decoded (the bench still
    /// sends uncompressed), and the report gives the bytes really received on the wire
    /// beside the decoded ones: the `deflate` section, and in the `join_storm` section
    /// `wire_bytes` (then the compressed bytes), `compressed_frames`, `decoded_bytes`.
    #[arg(long)]
    pub deflate: bool,

    /// Add a `timeline` to the report: per interval of wall-clock time (e.g. `100ms`),
    /// sends, acks, refused sends, deliveries (with the newest send time among them),
    /// disconnects, resumes and `recovered: false` answers. For scripts that inject a
    /// fault at a known instant and want to see when delivery came back.
    #[arg(long, value_parser = parse_duration)]
    pub timeline: Option<Duration>,
}

/// The workload: who is in which room and who publishes.
struct Plan {
    members: usize,
    publishers_per_room: usize,
    /// Per connection, its member slots.
    conns: Vec<Vec<MemberLedger>>,
    /// (connection, slot) of every publisher, interleaved across rooms.
    publishers: Vec<(usize, usize)>,
}

fn plan(args: &BenchArgs) -> anyhow::Result<Plan> {
    let n = args.connections;
    let r = args.rooms;
    if n == 0 || r == 0 {
        bail!("--connections and --rooms must be at least 1");
    }
    let members = args.members.unwrap_or_else(|| n.div_ceil(r));
    if members == 0 || members > n {
        bail!("--members must be between 1 and --connections ({n})");
    }
    let p = match args.publishers {
        Publishers::All => members,
        Publishers::PerRoom(p) => p.min(members),
    };
    let dense = args.protocol == Protocol::Socketio;
    let mut conns: Vec<Vec<MemberLedger>> = vec![Vec::new(); n];
    let mut slot_of = vec![vec![0usize; members]; r];
    for (room, slots) in slot_of.iter_mut().enumerate() {
        for (m, slot) in slots.iter_mut().enumerate() {
            let c = (room * members + m) % n;
            *slot = conns[c].len();
            let ledger = MemberLedger::new(room, m < p, dense);
            // With --resume, keep the ids received to tell acked losses from the rest.
            conns[c].push(if args.resume {
                ledger.track_ids()
            } else {
                ledger
            });
        }
    }
    let mut publishers = Vec::with_capacity(r * p);
    for m in 0..p {
        for (room, slots) in slot_of.iter().enumerate() {
            publishers.push(((room * members + m) % n, slots[m]));
        }
    }
    Ok(Plan {
        members,
        publishers_per_room: p,
        conns,
        publishers,
    })
}

/// `tcpi_bytes_acked` summed over the local listening ports of the targets (servers on
/// this machine); `None` when a target is not local or `ss` is missing.
fn server_tcp_bytes(targets: &[Target]) -> Option<u64> {
    if !targets.iter().all(|t| t.addr.ip().is_loopback()) {
        return None;
    }
    let mut ports: Vec<u16> = targets.iter().map(|t| t.addr.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    ports.into_iter().map(stats::tcp_bytes_acked).sum()
}

/// Hands publish orders to the publishers, round-robin (interleaved across rooms).
struct Pacer {
    publishers: Vec<(usize, usize)>,
    senders: Vec<Option<mpsc::UnboundedSender<SendCmd>>>,
    next: usize,
    rec: Arc<Recorder>,
}

impl Pacer {
    fn order(&mut self, step: usize, scheduled: Instant) {
        let (c, slot) = self.publishers[self.next % self.publishers.len()];
        self.next += 1;
        let cmd = SendCmd {
            slot,
            step: step as u32,
            scheduled,
        };
        if self.senders[c]
            .as_ref()
            .is_none_or(|tx| tx.send(cmd).is_err())
        {
            self.rec.skipped_sends.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn progress(args: &BenchArgs, len: u64) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if args.json || args.quiet || !std::io::stdout().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        pb.set_draw_target(ProgressDrawTarget::stderr());
    }
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
    ) {
        pb.set_style(style);
    }
    pb
}

/// Runs the bench and prints the report. With `--fail-on-loss`, returns an error when the
/// run lost or duplicated messages (see [`BenchArgs::fail_on_loss`]).
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    let steps: Vec<f64> = if args.rate_steps.is_empty() {
        vec![args.rate]
    } else {
        args.rate_steps.clone()
    };
    if steps.iter().any(|r| !r.is_finite() || *r < 0.0) {
        bail!("rates must be finite and not negative");
    }
    let run_id: u16 = rand::rng().random();
    let room_names: Vec<String> = (0..args.rooms)
        .map(|i| format!("{}-{run_id:04x}-{i}", args.room_prefix))
        .collect();
    if !room_names.iter().all(|n| is_valid_room(n)) {
        bail!(
            "--room-prefix gives invalid room names (allowed: A-Z a-z 0-9 . _ : -, at most {MAX_ROOM_CHARS})"
        );
    }
    let mut targets = Vec::new();
    for u in &args.urls {
        targets.push(Target::resolve(u, args.protocol).await?);
    }
    let sources = match args.source_ips.as_str() {
        "auto" => net::auto_source_ips(&targets, args.connections),
        "none" => Vec::new(),
        s => net::parse_source_ips(s)?,
    };
    let rooms_per_conn = plan.conns.iter().map(Vec::len).max().unwrap_or(0);
    let rec = Arc::new(Recorder::new(steps.len(), args.rooms).with_timeline(args.timeline));
    let probe = ServerProbe::new(args.server_pids.clone());
    let before_connect = probe.sample();

    if args.join_at_once && args.protocol != Protocol::Roomcast {
        bail!("--join-at-once needs --protocol roomcast");
    }
    let (gate_tx, gate_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        protocol: args.protocol,
        targets: targets.clone(),
        room_names: room_names.clone(),
        rec: rec.clone(),
        resume: args.resume,
        size: args.size,
        name_prefix: "bench-".into(),
        connect_timeout: args.connect_timeout,
        backoff_min: args.backoff,
        backoff_max: args.backoff_max,
        connect_permits: Arc::new(Semaphore::new(args.connect_concurrency.max(1))),
        join_gate: args.join_at_once.then_some(gate_rx),
        deflate: args.deflate,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let n = args.connections;
    let mut senders: Vec<Option<mpsc::UnboundedSender<SendCmd>>> = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    for (index, rooms) in plan.conns.into_iter().enumerate() {
        let (tx, rx) = if rooms.iter().any(|m| m.publisher) {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        senders.push(tx);
        let spec = ConnSpec {
            index,
            rooms,
            first_url: index % targets.len(),
            source: (!sources.is_empty()).then(|| sources[(index / targets.len()) % sources.len()]),
            start_delay: args.ramp_up.mul_f64(index as f64 / n as f64),
        };
        handles.push(tokio::spawn(conn::run(
            spec,
            shared.clone(),
            rx,
            stop_rx.clone(),
        )));
    }

    // Connect and join.
    let pb = progress(&args, n as u64);
    pb.set_prefix("connect");
    let t_connect = Instant::now();
    let mut storm_start = None;
    if args.join_at_once {
        // Every handshake first; then the joins, all at once.
        loop {
            let sessions = rec.sessions.load(Ordering::Relaxed);
            let failed = rec.failed.load(Ordering::Relaxed);
            pb.set_position(sessions as u64);
            if sessions + failed >= n || t_connect.elapsed() >= args.join_timeout {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the welcome frames arrive before the counters are read.
        tokio::time::sleep(Duration::from_millis(200)).await;
        storm_start = Some((
            server_tcp_bytes(&targets),
            Instant::now(),
            rec.sessions.load(Ordering::Relaxed),
            rec.frame_counts(),
            rec.wire.snapshot(),
            probe.sample(),
            t_connect.elapsed().as_secs_f64(),
        ));
        let _ = gate_tx.send(true);
        pb.set_prefix("join");
    }
    let t_join = Instant::now();
    loop {
        let ready = rec.ready.load(Ordering::Relaxed);
        let failed = rec.failed.load(Ordering::Relaxed);
        pb.set_position(ready as u64);
        pb.set_message(format!(
            "errors {} failed {failed}",
            rec.connect_errors.load(Ordering::Relaxed)
        ));
        if ready + failed >= n || t_connect.elapsed() >= args.join_timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(if args.join_at_once {
            5
        } else {
            50
        }))
        .await;
    }
    let connect_seconds = t_connect.elapsed().as_secs_f64();
    let join_seconds = t_join.elapsed().as_secs_f64();
    let ready = rec.ready.load(Ordering::Relaxed);
    if let Some(path) = &args.ready_file {
        let body = serde_json::json!({"connected": ready, "connections": n}).to_string();
        std::fs::write(path, body)
            .with_context(|| format!("cannot write --ready-file {}", path.display()))?;
    }
    let join_storm = match storm_start {
        Some((tcp0, t0, sessions, frames0, wire0, server0, handshake_seconds)) => {
            // Wait for the servers to fall quiet: presence of the last joins still flows.
            let quiet_us = args.storm_quiet.as_micros() as u64;
            let quiet = loop {
                if wire::now_us().saturating_sub(rec.last_frame_us()) >= quiet_us {
                    break true;
                }
                if t0.elapsed() >= args.join_timeout {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let last = rec.last_frame_us();
            let storm_seconds =
                t0.elapsed().as_secs_f64() - wire::now_us().saturating_sub(last) as f64 / 1e6;
            let server1 = probe.sample();
            let tcp1 = server_tcp_bytes(&targets);
            Some(JoinStorm::new(
                JoinStormInput {
                    tcp_bytes_acked: tcp0.zip(tcp1),
                    sessions,
                    handshake_seconds,
                    joined: ready,
                    join_seconds,
                    storm_seconds: storm_seconds.max(join_seconds),
                    quiet,
                    frames: rec.frame_counts().since(&frames0),
                    wire: args.deflate.then(|| rec.wire.snapshot().since(&wire0)),
                },
                (!probe.is_empty()).then_some((server0, server1)),
            ))
        }
        None => None,
    };

    // Publish, step by step.
    let mut step_reports = Vec::new();
    let mut skipped_steps: Vec<f64> = Vec::new();
    let mut pacer = Pacer {
        publishers: plan.publishers,
        senders,
        next: 0,
        rec: rec.clone(),
    };
    pb.set_prefix("publish");
    for (si, &rate) in steps.iter().enumerate() {
        let s0 = probe.sample();
        let w0: Vec<Option<(u64, u64)>> = args
            .watch_pids
            .iter()
            .map(|w| process_user_system_ticks(w.pid))
            .collect();
        let m0 = MachineSample::now();
        let t0 = Instant::now();
        let mut sent: u64 = 0;
        let target_count = args.messages;
        pb.set_length(target_count.unwrap_or(args.duration.as_millis() as u64));
        pb.set_position(0);
        // Nobody to publish (or nobody connected): hold for the duration only.
        let idle = rate <= 0.0 || pacer.publishers.is_empty() || ready == 0;
        loop {
            let el = t0.elapsed();
            let done = match target_count {
                Some(c) if !idle => sent >= c,
                _ => el >= args.duration,
            };
            if done {
                break;
            }
            if !idle {
                let mut due = (rate * el.as_secs_f64()) as u64;
                if let Some(c) = target_count {
                    due = due.min(c);
                }
                while sent < due {
                    pacer.order(si, t0 + Duration::from_secs_f64(sent as f64 / rate));
                    sent += 1;
                }
            }
            pb.set_position(target_count.map_or(el.as_millis() as u64, |_| sent));
            pb.set_message(format!(
                "step {}/{} rate {rate}/s, delivered {}",
                si + 1,
                steps.len(),
                rec.steps[si].deliveries.load(Ordering::Relaxed)
            ));
            tokio::time::sleep(if idle {
                Duration::from_millis(50)
            } else {
                Duration::from_millis(1)
            })
            .await;
        }
        if !idle && target_count.is_none() {
            // The loop polls: send what the last instant of the step was due.
            let due = (rate * args.duration.as_secs_f64()).round() as u64;
            while sent < due {
                pacer.order(si, t0 + Duration::from_secs_f64(sent as f64 / rate));
                sent += 1;
            }
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let s1 = probe.sample();
        let watched: Vec<WatchedCpu> = args
            .watch_pids
            .iter()
            .zip(&w0)
            .map(|(w, before)| {
                let delta =
                    before
                        .zip(process_user_system_ticks(w.pid))
                        .map(|((u0, s0), (u1, s1))| {
                            (
                                probe.ticks_to_seconds(u1.saturating_sub(u0)),
                                probe.ticks_to_seconds(s1.saturating_sub(s0)),
                            )
                        });
                WatchedCpu::new(w.label.clone(), w.pid, delta, elapsed)
            })
            .collect();
        let m1 = MachineSample::now();
        let machine = (
            MachineSample::busy_pct(m0, m1),
            probe.ticks_to_seconds(m1.self_ticks.saturating_sub(m0.self_ticks)),
            probe.user_seconds(s0, s1),
        );
        step_reports.push((rate, elapsed, probe.cpu_seconds(s0, s1), machine, watched));
        if let Some(max) = args.max_p99 {
            let p99 = rec.step_latency(si).0.p99;
            if p99 > max.as_micros() as u64 && si + 1 < steps.len() {
                skipped_steps = steps[si + 1..].to_vec();
                break;
            }
        }
    }
    let after_steps = probe.sample();

    // Settle: every send acked and nothing arriving for a while.
    drop(pacer);
    pb.set_prefix("settle");
    let t_settle = Instant::now();
    let quiet_us = 500_000;
    let settled = loop {
        let in_flight = rec.in_flight.load(Ordering::Relaxed);
        let last = rec.last_delivery_us.load(Ordering::Relaxed);
        if in_flight == 0 && wire::now_us().saturating_sub(last) >= quiet_us {
            break true;
        }
        if t_settle.elapsed() >= args.settle {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = stop_tx.send(true);
    let mut ledgers = Vec::new();
    for h in handles {
        match h.await {
            Ok(l) => ledgers.push(l),
            Err(e) => bail!("a connection task failed: {e}"),
        }
    }
    pb.finish_and_clear();

    // Loss per room.
    let mut rooms: Vec<RoomReport> = room_names
        .iter()
        .enumerate()
        .map(|(i, name)| RoomReport {
            room: name.clone(),
            messages: rec.room(i).ids.len() as u64,
            lost_acked: args.resume.then_some(0),
            ..RoomReport::default()
        })
        .collect();
    for m in ledgers.iter().flatten() {
        let r = &mut rooms[m.room];
        if m.join_offset.is_none() {
            r.members_not_joined += 1;
            continue;
        }
        r.members_joined += 1;
        let (lost, lost_acked) = {
            let room = rec.room(m.room);
            (m.lost(&room), m.lost_acked(&room))
        };
        r.lost += lost;
        r.lost_acked = r.lost_acked.zip(lost_acked).map(|(a, b)| a + b);
        r.duplicated += m.duplicated;
        r.reordered += m.reordered;
        r.unrecovered += m.unrecovered;
        if lost > 0 || m.duplicated > 0 {
            r.members_with_gaps += 1;
        }
    }

    let step_reports: Vec<StepReport> = step_reports
        .into_iter()
        .enumerate()
        .map(
            |(i, (rate, elapsed, cpu, (busy, client_cpu, user_cpu), watched))| {
                let s = &rec.steps[i];
                let (latency, cross) = rec.step_latency(i);
                let deliveries = s.deliveries.load(Ordering::Relaxed);
                StepReport::new(
                    rate,
                    elapsed,
                    s.sent.load(Ordering::Relaxed),
                    deliveries,
                    s.cross_deliveries.load(Ordering::Relaxed),
                    latency,
                    cross,
                    (!probe.is_empty()).then_some(cpu),
                )
                .with_machine(busy, client_cpu)
                .with_user_cpu((!probe.is_empty()).then_some(user_cpu), deliveries)
                .with_watched(watched)
            },
        )
        .collect();
    let server = (!probe.is_empty()).then(|| {
        ServerReport::new(
            probe.pids().to_vec(),
            before_connect.rss_kib,
            after_steps.rss_kib,
            ready,
        )
    });
    let totals = Totals::collect(&rec, &rooms, settled);
    let open_at_end = rec.open_at_stop.load(Ordering::Relaxed);
    let report = Report {
        protocol: args.protocol,
        urls: targets.iter().map(|t| t.url.clone()).collect(),
        connections: n,
        rooms: args.rooms,
        members_per_room: plan.members,
        publishers_per_room: plan.publishers_per_room,
        rooms_per_connection: rooms_per_conn,
        message_bytes: args.size,
        source_ips: sources.len(),
        resume: args.resume,
        connected: ready,
        connect_seconds: (connect_seconds * 100.0).round() / 100.0,
        first_connect_error: rec.first_connect_error(),
        steps: step_reports,
        skipped_steps,
        latency_all_us: rec.all_latency(),
        send_lag_us: rec.send_lag_summary(),
        totals,
        server,
        join_storm,
        deflate: args.deflate.then(|| rec.wire.snapshot()),
        open_at_end,
        rooms_detail: rooms,
        timeline: rec.timeline.as_ref().map(|t| report::TimelineReport {
            interval_ms: t.interval_ms(),
            buckets: t.buckets(),
        }),
    };
    let mut failures = report.failures(steps.iter().any(|r| *r > 0.0));
    if args.fail_on_disconnect && report.totals.disconnects > 0 {
        failures.push(format!(
            "{} connections closed during the run (closes {:?})",
            report.totals.disconnects, report.totals.closes_by_reason
        ));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    if (args.fail_on_loss || args.fail_on_disconnect) && !failures.is_empty() {
        bail!("bench failed: {}", failures.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        let mut argv = vec!["bench", "--url", "ws://127.0.0.1:1/ws"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).bench
    }

    #[test]
    fn plan_spreads_members_and_publishers() {
        let p = plan(&args(&[
            "-c",
            "10",
            "-r",
            "4",
            "-m",
            "5",
            "--publishers",
            "2",
        ]))
        .unwrap();
        let slots: usize = p.conns.iter().map(Vec::len).sum();
        assert_eq!(slots, 20);
        assert!(p.conns.iter().all(|c| c.len() == 2));
        for c in &p.conns {
            assert_ne!(c[0].room, c[1].room, "a connection is in a room once");
        }
        assert_eq!(p.publishers.len(), 8);
        assert_eq!(p.publishers[0].0, 0);
        assert_eq!(
            p.publishers[1].0, 5,
            "consecutive sends go to different rooms"
        );
    }

    #[test]
    fn members_default_to_connections_over_rooms() {
        let p = plan(&args(&["-c", "2000", "-r", "20"])).unwrap();
        assert_eq!(p.members, 100);
        assert_eq!(p.publishers_per_room, 100);
        assert!(plan(&args(&["-c", "10", "-m", "11"])).is_err());
    }
}
