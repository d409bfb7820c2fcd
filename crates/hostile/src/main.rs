//! `roomcast-hostile`: hostile WebSocket clients for a live roomcast deployment. From many
//! concurrent connections it sends random and mutated frames (mutations of the protocol's
//! example frames, random JSON, random binary frames, fragmented messages, oversized
//! frames, control frames with odd payloads, invalid UTF-8, reserved bits and opcodes,
//! unmasked frames, permessage-deflate garbage and bombs, frames cut short), broken
//! opening handshakes, and ends connections every way a client can: close frames,
//! half-closed sockets (shutdown of the write side), abrupt resets, abandoned sockets.
//!
//! It stops by itself after `--frames` frames or `--max-time`, whichever comes first (a
//! fragmented message counts as one frame, its continuation frames and the pings between
//! them are counted apart as wire frames), and reports the frames sent by kind (share of
//! the mix, and wire frames), the gateway's answers (error frames by code, close
//! frames by code) and how connections ended. Whether the gateway survived is the
//! caller's to check (`scripts/hostile`: processes alive, `/healthz`, normal clients lose
//! nothing, RSS back after the run).
//!
//! Layout: [`frames`] encodes frames and generates each hostile kind; [`conn`] runs one
//! connection from connect to its ending.
#![forbid(unsafe_code)]

mod conn;
mod frames;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;

use conn::{Counts, Shared, Target};
use frames::Kind;

/// Send random, mutated and malformed WebSocket frames to roomcast gateways from many
/// connections, and report what the gateways answered.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Gateway WebSocket URL (`ws://HOST:PORT/ws`); repeat or comma-separate to spread
    /// connections over several (a load balancer and replicas directly).
    #[arg(long = "url", required = true, value_delimiter = ',')]
    urls: Vec<String>,

    /// Frames to send in all; the run stops once this many were written. A fragmented
    /// message (or a rule-breaking sequence of frames) counts as one.
    #[arg(long, default_value_t = 100_000)]
    frames: u64,

    /// Connections open at once (each worker opens the next when one ends).
    #[arg(long, default_value_t = 48)]
    connections: usize,

    /// Most frames on one connection (each gets 1 to this many; a paced tenth at most 30,
    /// 30 to 60 ms apart, under the gateway's rate limit).
    #[arg(long, default_value_t = 120)]
    max_frames_per_conn: usize,

    /// Stop after this long even when fewer than --frames were sent (e.g. 90s, 10m).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    max_time: Duration,

    /// The gateway's `limits.max_frame_bytes` (oversized frames go just past it).
    #[arg(long, default_value_t = frames::DEFAULT_MAX_FRAME)]
    max_frame_bytes: usize,

    /// Loopback source addresses to connect from, `127.0.0.A-127.0.0.B` or a comma list
    /// (many addresses keep short-lived connections clear of ephemeral port exhaustion);
    /// parsed as roomcast-bench's `--source-ips`.
    #[arg(long, default_value = "127.0.0.2-127.0.0.62")]
    source_ips: String,

    /// Seed of the random choices (default: random). Worker i uses seed + i.
    #[arg(long)]
    seed: Option<u64>,

    /// Print one JSON report on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("not a duration (use ms, s, m or h): {s}")),
    }
}

async fn parse_target(url: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("--url must start with ws:// ({url})"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/ws"),
    };
    let addr: SocketAddr = match host.parse() {
        Ok(a) => a,
        Err(_) => tokio::net::lookup_host(host)
            .await
            .with_context(|| format!("resolving {host}"))?
            .find(SocketAddr::is_ipv4)
            .with_context(|| format!("no IPv4 address for {host}"))?,
    };
    Ok(Target {
        addr,
        host: host.to_string(),
        path: path.to_string(),
    })
}

fn table(title: &str, map: &BTreeMap<impl AsRef<str> + Ord, u64>) -> String {
    let mut s = format!("{title}:\n");
    if map.is_empty() {
        s.push_str("  (none)\n");
    }
    for (k, v) in map {
        s.push_str(&format!("  {:<44} {v:>10}\n", k.as_ref()));
    }
    s
}

/// The mix: per kind, the frames sent (steps: a fragmented message counts once) and their
/// share, and the wire frames (every fragment and interleaved ping) and theirs.
fn mix_table(frames: &BTreeMap<&'static str, u64>, wire: &BTreeMap<&'static str, u64>) -> String {
    let total: u64 = frames.values().sum();
    let wire_total: u64 = wire.values().sum();
    let row = |kind: &str, n: u64, w: u64| {
        let share = |x: u64, of: u64| 100.0 * x as f64 / of.max(1) as f64;
        format!(
            "  {kind:<30} {n:>10} {:>6.1}% {w:>12} {:>6.1}%\n",
            share(n, total),
            share(w, wire_total)
        )
    };
    let mut s = String::from("frames sent by kind (a fragmented message counts once):\n");
    s += &format!(
        "  {:<30} {:>10} {:>7} {:>12} {:>7}\n",
        "kind", "frames", "share", "wire frames", "share"
    );
    let mut rows: Vec<_> = frames.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (k, n) in rows {
        s += &row(k, *n, wire.get(k).copied().unwrap_or(0));
    }
    s += &row("all", total, wire_total);
    let text_kinds = [Kind::Mutated, Kind::RandomJson, Kind::RandomText].map(Kind::as_str);
    let text: u64 = text_kinds.iter().filter_map(|k| frames.get(k)).sum();
    s += &format!(
        "  random and mutated text ({}): {:.1}% of the frames\n",
        text_kinds.join(", "),
        100.0 * text as f64 / total.max(1) as f64
    );
    s
}

fn to_json<K: AsRef<str> + Ord>(map: &BTreeMap<K, u64>) -> serde_json::Value {
    serde_json::Value::Object(
        map.iter()
            .map(|(k, v)| (k.as_ref().to_string(), serde_json::json!(v)))
            .collect(),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut targets = Vec::new();
    for u in &args.urls {
        targets.push(parse_target(u).await?);
    }
    let sources =
        roomcast_bench::net::parse_source_ips(&args.source_ips).context("--source-ips")?;
    let started = Instant::now();
    let shared = Arc::new(Shared {
        targets,
        sources,
        max_frames_per_conn: args.max_frames_per_conn,
        max_frame: args.max_frame_bytes,
        // 16 MiB of zeros: about 16 KiB on the wire, a thousand times the frame limit.
        bomb: Arc::new(frames::deflate_bomb(16 << 20)),
        sent: AtomicU64::new(0),
        wire_sent: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        target_frames: args.frames,
        deadline: started + args.max_time,
    });
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!(
        "[hostile] {} frames over {} connections at once to {} (seed {seed}, at most {:?})",
        args.frames,
        args.connections,
        args.urls.join(", "),
        args.max_time
    );

    let progress = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let sent = shared.sent.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "[hostile] {secs:.0}s: {sent} frames ({:.0}/s; {} on the wire), {} connections",
                    sent as f64 / secs.max(0.001),
                    shared.wire_sent.load(Ordering::Relaxed),
                    shared.connections.load(Ordering::Relaxed)
                );
            }
        })
    };
    let mut workers = Vec::new();
    for w in 0..args.connections.max(1) {
        let shared = shared.clone();
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w as u64));
        workers.push(tokio::spawn(async move {
            let mut counts = Counts::default();
            while !shared.done() {
                // A connection that hangs past every timeout is cut off here.
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    conn::run(&shared, &mut rng, &mut counts),
                )
                .await
                .map_err(|_| conn::bump(&mut counts.anomalies, "connection_timeout".into(), 1));
            }
            counts
        }));
    }
    let mut total = Counts::default();
    for w in workers {
        match w.await {
            Ok(c) => total.merge(c),
            Err(e) => conn::bump(&mut total.anomalies, format!("worker_failed: {e}"), 1),
        }
    }
    progress.abort();
    let secs = started.elapsed().as_secs_f64();
    let sent = shared.sent.load(Ordering::Relaxed);
    let wire_sent = shared.wire_sent.load(Ordering::Relaxed);
    let complete = sent >= args.frames;

    let mut text = format!(
        "roomcast-hostile: {sent} frames ({wire_sent} on the wire) in {secs:.1} s ({:.0}/s) over {} connections ({} upgraded, {} with permessage-deflate){}\n\n",
        sent as f64 / secs.max(0.001),
        total.connections,
        total.upgraded,
        total.deflate,
        if complete {
            ""
        } else {
            "; STOPPED EARLY (--max-time)"
        }
    );
    text += &mix_table(&total.frames, &total.wire_frames);
    let kinds_missing: Vec<&str> = Kind::NON_FATAL
        .iter()
        .chain(Kind::FATAL.iter())
        .map(|k| k.as_str())
        .filter(|k| !total.frames.contains_key(k))
        .collect();
    if !kinds_missing.is_empty() {
        text += &format!("  kinds not sent: {}\n", kinds_missing.join(", "));
    }
    text += &table("opening handshakes (kind: answer)", &total.handshakes);
    text += &table("error frames received by code", &total.errors);
    text += &table("close frames received by code", &total.closes);
    text += &table("endings (ours)", &total.endings);
    text += &table("server frames by type", &total.server_frames);
    text += &table("write errors (the gateway had closed)", &total.write_errors);
    text += &table("connect failures", &total.connect_failures);
    text += &table(
        "anomalies (a gateway answer that breaks the protocol)",
        &total.anomalies,
    );
    if args.json {
        eprint!("{text}");
        let report = serde_json::json!({
            "frames_target": args.frames,
            "frames_sent": sent,
            "wire_frames_sent": wire_sent,
            "complete": complete,
            "seconds": secs,
            "frames_per_second": sent as f64 / secs.max(0.001),
            "seed": seed,
            "connections": total.connections,
            "upgraded": total.upgraded,
            "deflate": total.deflate,
            "frames_by_kind": to_json(&total.frames),
            "wire_frames_by_kind": to_json(&total.wire_frames),
            "kinds_missing": kinds_missing,
            "handshakes": to_json(&total.handshakes),
            "errors_by_code": to_json(&total.errors),
            "closes_by_code": to_json(&total.closes),
            "endings": to_json(&total.endings),
            "server_frames": to_json(&total.server_frames),
            "write_errors": to_json(&total.write_errors),
            "connect_failures": to_json(&total.connect_failures),
            "anomalies": to_json(&total.anomalies),
        });
        println!("{report}");
    } else {
        print!("{text}");
    }
    if total.upgraded == 0 {
        bail!("no connection was upgraded: is the gateway up?");
    }
    if !complete {
        bail!(
            "stopped at --max-time after {sent} of {} frames",
            args.frames
        );
    }
    Ok(())
}
