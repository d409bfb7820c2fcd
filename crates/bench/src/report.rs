//! The bench report: one JSON document (`--json`, for scripts) or a table for people.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::deflate::WireCounts;
use super::stats::{Bucket, FrameCounts, Recorder, ServerSample, Summary};
use super::wire::FrameKind;
use super::wire::Protocol;

/// One rate step.
#[derive(Serialize, Debug)]
pub struct StepReport {
    /// Requested total publish rate, messages/s.
    pub rate: f64,
    pub seconds: f64,
    /// Messages written by the publishers in this step.
    pub sent: u64,
    pub sent_per_s: f64,
    /// Deliveries of this step's messages (counted even when they arrive after the step).
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    /// Send to receive, microseconds, all deliveries.
    pub latency_us: Summary,
    /// Deliveries whose publisher was connected to another URL (replica) than the receiver.
    pub cross_deliveries: u64,
    pub cross_latency_us: Summary,
    /// utime + stime of the --server-pid processes during the step.
    pub server_cpu_s: Option<f64>,
    pub server_cpu_s_per_million_deliveries: Option<f64>,
    pub deliveries_per_server_cpu_s: Option<f64>,
    /// Server CPU as a percentage of one core.
    pub server_cpu_pct: Option<f64>,
    /// User-space part of server_cpu_s (on loopback, the system part also carries the
    /// kernel's receive path of the client sockets, which a real network puts elsewhere).
    pub server_user_cpu_s: Option<f64>,
    pub server_user_cpu_s_per_million_deliveries: Option<f64>,
    /// How busy the whole machine was (all cores, percent): other load blurs latency.
    pub machine_busy_pct: Option<f64>,
    /// CPU seconds the load generator itself used during the step.
    pub client_cpu_s: f64,
    /// CPU time of each `--watch-pid` process during the step (absent without the flag).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub watched: Vec<WatchedCpu>,
}

/// CPU time of one `--watch-pid` process during a step (utime and stime from /proc).
#[derive(Serialize, Debug, Clone)]
pub struct WatchedCpu {
    pub label: String,
    pub pid: u32,
    /// user + system seconds; `None` when the process was gone at either end of the step.
    pub cpu_s: Option<f64>,
    pub user_s: Option<f64>,
    pub sys_s: Option<f64>,
    /// cpu_s as a percentage of one core.
    pub cpu_pct: Option<f64>,
}

impl WatchedCpu {
    pub fn new(label: String, pid: u32, user_sys_s: Option<(f64, f64)>, seconds: f64) -> Self {
        WatchedCpu {
            label,
            pid,
            cpu_s: user_sys_s.map(|(u, s)| round(u + s, 2)),
            user_s: user_sys_s.map(|(u, _)| round(u, 2)),
            sys_s: user_sys_s.map(|(_, s)| round(s, 2)),
            cpu_pct: user_sys_s
                .filter(|_| seconds > 0.0)
                .map(|(u, s)| round((u + s) * 100.0 / seconds, 1)),
        }
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

impl StepReport {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rate: f64,
        seconds: f64,
        sent: u64,
        deliveries: u64,
        cross_deliveries: u64,
        latency_us: Summary,
        cross_latency_us: Summary,
        server_cpu_s: Option<f64>,
    ) -> Self {
        let per_s = |x: u64| {
            if seconds > 0.0 {
                round(x as f64 / seconds, 1)
            } else {
                0.0
            }
        };
        StepReport {
            rate,
            seconds: round(seconds, 2),
            sent,
            sent_per_s: per_s(sent),
            deliveries,
            deliveries_per_s: per_s(deliveries),
            latency_us,
            cross_deliveries,
            cross_latency_us,
            server_cpu_s: server_cpu_s.map(|c| round(c, 2)),
            server_cpu_s_per_million_deliveries: server_cpu_s
                .filter(|_| deliveries > 0)
                .map(|c| round(c * 1e6 / deliveries as f64, 2)),
            deliveries_per_server_cpu_s: server_cpu_s
                .filter(|c| *c > 0.0)
                .map(|c| round(deliveries as f64 / c, 0)),
            server_cpu_pct: server_cpu_s
                .filter(|_| seconds > 0.0)
                .map(|c| round(c * 100.0 / seconds, 1)),
            server_user_cpu_s: None,
            server_user_cpu_s_per_million_deliveries: None,
            machine_busy_pct: None,
            client_cpu_s: 0.0,
            watched: Vec::new(),
        }
    }

    /// Adds the servers' user-space CPU time.
    pub fn with_user_cpu(mut self, user_cpu_s: Option<f64>, deliveries: u64) -> Self {
        self.server_user_cpu_s = user_cpu_s.map(|c| round(c, 2));
        self.server_user_cpu_s_per_million_deliveries = user_cpu_s
            .filter(|_| deliveries > 0)
            .map(|c| round(c * 1e6 / deliveries as f64, 2));
        self
    }

    /// Adds the machine's busy share and the load generator's own CPU time.
    pub fn with_machine(mut self, busy_pct: Option<f64>, client_cpu_s: f64) -> Self {
        self.machine_busy_pct = busy_pct.map(|b| round(b, 1));
        self.client_cpu_s = round(client_cpu_s, 2);
        self
    }

    /// Adds the CPU time of the `--watch-pid` processes.
    pub fn with_watched(mut self, watched: Vec<WatchedCpu>) -> Self {
        self.watched = watched;
        self
    }
}

/// Loss accounting of one room, summed over its members.
#[derive(Serialize, Debug, Default, Clone)]
pub struct RoomReport {
    pub room: String,
    /// Distinct message ids published to the room (from acks and deliveries).
    pub messages: u64,
    pub members_joined: u64,
    pub members_not_joined: u64,
    pub members_with_gaps: u64,
    pub lost: u64,
    /// Of `lost`, messages whose publisher got an ack (`--resume` only).
    pub lost_acked: Option<u64>,
    pub duplicated: u64,
    pub reordered: u64,
    pub unrecovered: u64,
}

/// Run-wide counters.
#[derive(Serialize, Debug)]
pub struct Totals {
    pub sent: u64,
    pub acked: u64,
    /// Sends answered with an error (`unavailable` while the bus is down, `rate_limited`,
    /// ...): refused, not published, so never expected by anyone and never lost. Also in
    /// `errors_by_code`, with the refused joins.
    pub refused: u64,
    pub refused_by_code: BTreeMap<String, u64>,
    /// Time from writing a send until its answer (`ack` or error), microseconds: how long a
    /// sender waits to learn whether its message was published.
    pub answer_us: Summary,
    /// Sends whose connection closed before the ack (with --resume, these may or may not
    /// have been published; either way members' ledgers stay exact).
    pub unacked: u64,
    /// Sends not made because the connection was down or still joining.
    pub skipped_sends: u64,
    pub deliveries: u64,
    /// Missing deliveries over all members (a member expects every message published to its
    /// room after it joined).
    pub lost: u64,
    /// Of `lost`, messages whose publisher got an `ack`: the promise is that these are 0.
    /// The rest were sent without an ack (the connection or Redis went away with the send
    /// in flight, so it may or may not have been published). `--resume` only (members then
    /// keep the ids they received); `null` otherwise.
    pub lost_acked: Option<u64>,
    pub duplicated: u64,
    pub reordered: u64,
    /// Resumes answered `recovered: false` (counted as a failure).
    pub unrecovered: u64,
    pub members_not_joined: u64,
    pub connects: u64,
    pub connect_errors: u64,
    pub join_errors: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    /// `--resume`: time from a connection's close until all its rooms were joined again
    /// (count = resumes; max = the slowest, e.g. the last client of a killed replica).
    pub resume_us: Summary,
    pub foreign_messages: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub closes_by_reason: BTreeMap<String, u64>,
    /// Whether the settle wait ended with every send acked and deliveries quiet.
    pub settled: bool,
    /// Every frame the connections received during the whole run, by type.
    pub frames_by_type: BTreeMap<String, FrameTally>,
}

/// Frames of one type and their WebSocket payload bytes.
#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameTally {
    pub frames: u64,
    pub bytes: u64,
}

fn tallies(c: &FrameCounts) -> BTreeMap<String, FrameTally> {
    c.by_kind()
        .map(|(name, frames, bytes)| (name.to_string(), FrameTally { frames, bytes }))
        .collect()
}

/// `--join-at-once`: what the measurement loop saw of the join storm.
#[derive(Debug)]
pub struct JoinStormInput {
    /// `tcpi_bytes_acked` summed over the servers' local sockets at the release and at
    /// the end (see [`crate::stats::tcp_bytes_acked`]); `None` for remote servers.
    pub tcp_bytes_acked: Option<(u64, u64)>,
    /// Connections whose handshake completed before the release.
    pub sessions: usize,
    /// Time to open them all (handshakes only).
    pub handshake_seconds: f64,
    /// Connections that had their `joined`.
    pub joined: usize,
    /// Release until every connection had its `joined` (or the join timeout).
    pub join_seconds: f64,
    /// Release until the last frame before the quiet period.
    pub storm_seconds: f64,
    /// Whether the quiet period was reached before --join-timeout.
    pub quiet: bool,
    /// Frames received from the release until the quiet period.
    pub frames: FrameCounts,
    /// `--deflate`: what the connections' shims counted over the same window.
    pub wire: Option<WireCounts>,
}

/// The join storm (`--join-at-once`): N connections open, then all join at one instant.
#[derive(Serialize, Debug)]
pub struct JoinStorm {
    /// Connections open (handshake done) when the joins were released.
    pub connections: usize,
    pub handshake_seconds: f64,
    /// Connections that had their `joined` by the end.
    pub joined: usize,
    /// Release until every connection had its `joined`.
    pub join_seconds: f64,
    /// Release until the last frame of the storm (joins and presence all delivered).
    pub storm_seconds: f64,
    /// false: frames still arrived when --join-timeout ran out.
    pub quiet: bool,
    /// Frames received from the release to the end of the storm, by type. `welcome`
    /// frames are listed but left out of the totals: the server sent them at the handshake,
    /// before the release (a connection reads them only once its joins are released).
    pub frames_by_type: BTreeMap<String, FrameTally>,
    /// Frames for the joins: every type but `welcome`.
    pub frames: u64,
    /// WebSocket payload bytes of those frames.
    pub bytes: u64,
    /// What the servers wrote to the sockets for the joins: WebSocket frame headers and
    /// payloads as sent. Without permessage-deflate, computed from the payloads (one frame
    /// per message); with it (`deflate`), the bytes the connections really received,
    /// compressed payloads as compressed (first frames, the welcomes, left out).
    pub wire_bytes: u64,
    /// Whether the bench offered permessage-deflate (`--deflate`).
    pub deflate_offered: bool,
    /// Whether the servers accepted it (in every handshake of the run).
    pub deflate: bool,
    /// Frames that arrived compressed (RSV1) over the window, and their bytes on the wire
    /// (headers and compressed payloads; part of `wire_bytes`).
    pub compressed_frames: u64,
    pub compressed_wire_bytes: u64,
    /// Payload bytes those compressed frames inflated to (part of `bytes`).
    pub decoded_bytes: u64,
    /// What `wire_bytes` would be had nothing been compressed: `bytes` plus the headers of
    /// frames that size (equal to `wire_bytes` without deflate).
    pub uncompressed_wire_bytes: u64,
    /// Bytes the servers' local sockets sent and had acknowledged over the window
    /// (`tcpi_bytes_acked` from `ss -tin`, summed over their established connections):
    /// the cross-check of `wire_bytes`; absent for servers on other machines.
    pub server_tcp_bytes: Option<u64>,
    /// server_tcp_bytes / wire_bytes (1.0 when every byte was accounted for).
    pub server_tcp_over_wire: Option<f64>,
    /// Presence frames that were summaries (`"event":"summary"`).
    pub presence_summaries: u64,
    /// Largest `members` list in a `joined` (entries).
    pub max_members_listed: u64,
    /// Largest `member_count` in a `joined` (absent from servers that do not send it).
    pub max_member_count: Option<u64>,
    /// Bytes the --server-pid processes passed to `write(2)` and friends (`wchar`,
    /// /proc/PID/io) over the same window. Socket writes with `send(2)` (Rust's
    /// `TcpStream`, so the gateway's) are not counted there: see `server_tcp_bytes`.
    pub server_wchar_bytes: Option<u64>,
    /// server_wchar_bytes / wire_bytes.
    pub server_wchar_over_wire: Option<f64>,
    /// Peak RSS of the --server-pid processes since they started (VmHWM, summed), KiB.
    pub server_peak_rss_kib: Option<u64>,
    /// VmRSS at the release and at the end of the storm, KiB.
    pub server_rss_at_release_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
}

impl JoinStorm {
    pub fn new(i: JoinStormInput, server: Option<(ServerSample, ServerSample)>) -> Self {
        let w = FrameKind::Welcome.index();
        let (welcome_frames, welcome_bytes) = (i.frames.frames[w], i.frames.bytes[w]);
        // A welcome is far below 126 bytes: a 2-byte header each.
        let uncompressed = i
            .frames
            .wire_bytes()
            .saturating_sub(welcome_bytes + 2 * welcome_frames);
        let wire = match &i.wire {
            Some(w) => w.wire_bytes.saturating_sub(w.first_frame_wire_bytes),
            None => uncompressed,
        };
        let deflate = i.wire.unwrap_or_default();
        let wchar = server.and_then(|(a, b)| Some(b.wchar?.saturating_sub(a.wchar?)));
        let tcp = i.tcp_bytes_acked.map(|(a, b)| b.saturating_sub(a));
        JoinStorm {
            connections: i.sessions,
            handshake_seconds: round(i.handshake_seconds, 3),
            joined: i.joined,
            join_seconds: round(i.join_seconds, 3),
            storm_seconds: round(i.storm_seconds, 3),
            quiet: i.quiet,
            frames_by_type: tallies(&i.frames),
            frames: i.frames.total_frames().saturating_sub(welcome_frames),
            bytes: i.frames.total_bytes().saturating_sub(welcome_bytes),
            wire_bytes: wire,
            deflate_offered: i.wire.is_some(),
            deflate: deflate.negotiated(),
            compressed_frames: deflate.compressed_frames,
            compressed_wire_bytes: deflate.compressed_wire_bytes,
            decoded_bytes: deflate.decoded_bytes,
            uncompressed_wire_bytes: uncompressed,
            server_tcp_bytes: tcp,
            server_tcp_over_wire: tcp
                .filter(|_| wire > 0)
                .map(|t| round(t as f64 / wire as f64, 3)),
            presence_summaries: i.frames.presence_summaries,
            max_members_listed: i.frames.max_members_listed,
            max_member_count: (i.frames.max_member_count > 0).then_some(i.frames.max_member_count),
            server_wchar_bytes: wchar,
            server_wchar_over_wire: wchar
                .filter(|_| wire > 0)
                .map(|w| round(w as f64 / wire as f64, 3)),
            server_peak_rss_kib: server.map(|(_, b)| b.hwm_kib),
            server_rss_at_release_kib: server.map(|(a, _)| a.rss_kib),
            server_rss_after_kib: server.map(|(_, b)| b.rss_kib),
        }
    }

    fn print(&self) {
        println!(
            "join storm: {} connections (handshakes in {:.2} s) joined at once: {}/{} had their joined after {:.3} s; last frame after {:.3} s{}",
            self.connections,
            self.handshake_seconds,
            self.joined,
            self.connections,
            self.join_seconds,
            self.storm_seconds,
            if self.quiet {
                ""
            } else {
                " (still busy at --join-timeout)"
            }
        );
        println!(
            "  received {} frames, {} payload bytes ({} on the wire with headers); joined listed at most {} members{}, {} presence summaries",
            self.frames,
            self.bytes,
            self.wire_bytes,
            self.max_members_listed,
            self.max_member_count
                .map(|c| format!(" (member_count up to {c})"))
                .unwrap_or_default(),
            self.presence_summaries
        );
        if self.deflate {
            println!(
                "  permessage-deflate negotiated: {} frames arrived compressed, {} bytes on the wire for {} payload bytes; {} bytes on the wire in all, {} uncompressed",
                self.compressed_frames,
                self.compressed_wire_bytes,
                self.decoded_bytes,
                self.wire_bytes,
                self.uncompressed_wire_bytes
            );
        } else if self.deflate_offered {
            println!(
                "  permessage-deflate offered, not negotiated: the server answered without it"
            );
        }
        let parts: Vec<String> = self
            .frames_by_type
            .iter()
            .filter(|(_, t)| t.frames > 0)
            .map(|(k, t)| format!("{k} {} ({} B)", t.frames, t.bytes))
            .collect();
        println!("  by type (payload bytes as decoded): {}", parts.join(", "));
        if let Some(t) = self.server_tcp_bytes {
            println!(
                "  server sockets sent {t} bytes (tcpi_bytes_acked), {} x the bytes received",
                opt(self.server_tcp_over_wire, 3)
            );
        }
        if let Some(w) = self.server_wchar_bytes {
            println!(
                "  server wchar {w} bytes (write(2) only, not send(2)); peak RSS {} KiB",
                self.server_peak_rss_kib.unwrap_or(0)
            );
        }
    }
}

impl Totals {
    pub fn collect(rec: &Recorder, rooms: &[RoomReport], settled: bool) -> Self {
        let sum = |f: fn(&RoomReport) -> u64| rooms.iter().map(f).sum::<u64>();
        Totals {
            sent: rec
                .steps
                .iter()
                .map(|s| s.sent.load(Ordering::Relaxed))
                .sum(),
            acked: rec.acked.load(Ordering::Relaxed),
            refused: rec.refused.load(Ordering::Relaxed),
            refused_by_code: rec.refused_by_code(),
            answer_us: rec.answer_summary(),
            unacked: rec.unacked.load(Ordering::Relaxed),
            skipped_sends: rec.skipped_sends.load(Ordering::Relaxed),
            deliveries: rec
                .steps
                .iter()
                .map(|s| s.deliveries.load(Ordering::Relaxed))
                .sum(),
            lost: sum(|r| r.lost),
            lost_acked: rooms.iter().map(|r| r.lost_acked).sum::<Option<u64>>(),
            duplicated: sum(|r| r.duplicated),
            reordered: sum(|r| r.reordered),
            unrecovered: sum(|r| r.unrecovered),
            members_not_joined: sum(|r| r.members_not_joined),
            connects: rec.connects.load(Ordering::Relaxed),
            connect_errors: rec.connect_errors.load(Ordering::Relaxed),
            join_errors: rec.join_errors.load(Ordering::Relaxed),
            disconnects: rec.disconnects.load(Ordering::Relaxed),
            reconnects: rec.reconnects.load(Ordering::Relaxed),
            resume_us: rec.resume_summary(),
            foreign_messages: rec.foreign.load(Ordering::Relaxed),
            errors_by_code: rec.errors(),
            closes_by_reason: rec.closes(),
            settled,
            frames_by_type: tallies(&rec.frame_counts()),
        }
    }
}

/// Server-side memory figures (from /proc of --server-pid).
#[derive(Serialize, Debug)]
pub struct ServerReport {
    pub pids: Vec<u32>,
    /// Sum of VmRSS before the first connect, KiB.
    pub rss_before_kib: u64,
    /// Sum of VmRSS at the end of the last step (connections still open), KiB.
    pub rss_after_kib: u64,
    /// (after - before) / connected connections, bytes.
    pub rss_per_connection_bytes: Option<f64>,
}

impl ServerReport {
    pub fn new(pids: Vec<u32>, before: u64, after: u64, connections: usize) -> Self {
        ServerReport {
            pids,
            rss_before_kib: before,
            rss_after_kib: after,
            rss_per_connection_bytes: (connections > 0).then(|| {
                round(
                    after.saturating_sub(before) as f64 * 1024.0 / connections as f64,
                    0,
                )
            }),
        }
    }
}

/// The whole report.
#[derive(Serialize, Debug)]
pub struct Report {
    pub protocol: Protocol,
    pub urls: Vec<String>,
    pub connections: usize,
    pub rooms: usize,
    pub members_per_room: usize,
    pub publishers_per_room: usize,
    pub rooms_per_connection: usize,
    pub message_bytes: usize,
    pub source_ips: usize,
    pub resume: bool,
    /// Connections that joined all their rooms.
    pub connected: usize,
    /// Time until every connection joined (or gave up).
    pub connect_seconds: f64,
    pub first_connect_error: Option<String>,
    pub steps: Vec<StepReport>,
    /// Rates not run because an earlier step exceeded --max-p99.
    pub skipped_steps: Vec<f64>,
    pub latency_all_us: Summary,
    /// How late publishers wrote their messages compared to the schedule (bench overload).
    pub send_lag_us: Summary,
    pub totals: Totals,
    pub server: Option<ServerReport>,
    /// `--join-at-once` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_storm: Option<JoinStorm>,
    /// `--deflate` only: the whole run's frames as they came over the wire (whether the
    /// servers accepted permessage-deflate, compressed frames and what they inflated to).
    /// `totals.frames_by_type` counts payloads as decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deflate: Option<WireCounts>,
    /// Connections that joined and were still open when the run stopped them.
    pub open_at_end: usize,
    pub rooms_detail: Vec<RoomReport>,
    /// `--timeline` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<TimelineReport>,
}

/// `--timeline`: the run in fixed intervals of wall-clock time (see [`Bucket`]).
#[derive(Serialize, Debug)]
pub struct TimelineReport {
    pub interval_ms: u64,
    pub buckets: Vec<Bucket>,
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |v| format!("{v:.digits$}"))
}

impl Report {
    /// Reasons the run counts as failed for `--fail-on-loss` (empty when healthy).
    pub fn failures(&self, publishing: bool) -> Vec<String> {
        let t = &self.totals;
        let mut f = Vec::new();
        if t.lost > 0 {
            f.push(format!("{} messages lost", t.lost));
        }
        if t.duplicated > 0 {
            f.push(format!("{} messages duplicated", t.duplicated));
        }
        if t.unrecovered > 0 {
            f.push(format!("{} resumes not recovered", t.unrecovered));
        }
        if t.members_not_joined > 0 || self.connected < self.connections {
            f.push(format!(
                "{} of {} connections never joined their rooms{}",
                self.connections - self.connected,
                self.connections,
                self.first_connect_error
                    .as_ref()
                    .map(|e| format!(" (first error: {e})"))
                    .unwrap_or_default()
            ));
        }
        if publishing && t.deliveries == 0 {
            f.push("nothing was delivered".into());
        }
        f
    }

    /// Prints the human-readable report.
    pub fn print(&self) {
        println!(
            "roomcast-bench ({:?}): {} connections over {} URL(s), {} rooms x {} members, {} publishers/room, {} B messages{}",
            self.protocol,
            self.connections,
            self.urls.len(),
            self.rooms,
            self.members_per_room,
            self.publishers_per_room,
            self.message_bytes,
            if self.resume { ", resume on" } else { "" }
        );
        println!(
            "connected: {}/{} in {:.2} s ({} connect errors){}",
            self.connected,
            self.connections,
            self.connect_seconds,
            self.totals.connect_errors,
            self.first_connect_error
                .as_ref()
                .map(|e| format!("; first error: {e}"))
                .unwrap_or_default()
        );
        if let Some(d) = &self.deflate {
            println!(
                "permessage-deflate: accepted in {} of {} handshakes; received {} frames, {} bytes on the wire; {} compressed ({} bytes on the wire, {} inflated)",
                d.handshakes_agreed,
                d.handshakes_agreed + d.handshakes_refused,
                d.frames,
                d.wire_bytes,
                d.compressed_frames,
                d.compressed_wire_bytes,
                d.decoded_bytes
            );
        }
        if let Some(j) = &self.join_storm {
            j.print();
        }
        println!(
            "{:>8} {:>9} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>12} {:>6} {:>8}",
            "rate/s",
            "sent/s",
            "deliv/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "x-p99 ms",
            "cpu s",
            "cpu s/Mdeliv",
            "busy%",
            "bench s"
        );
        for s in &self.steps {
            println!(
                "{:>8} {:>9.1} {:>12.1} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>12} {:>6} {:>8.2}",
                s.rate,
                s.sent_per_s,
                s.deliveries_per_s,
                ms(s.latency_us.p50),
                ms(s.latency_us.p90),
                ms(s.latency_us.p99),
                ms(s.latency_us.p999),
                ms(s.latency_us.max),
                if s.cross_deliveries > 0 {
                    ms(s.cross_latency_us.p99)
                } else {
                    "-".into()
                },
                opt(s.server_cpu_s, 2),
                opt(s.server_cpu_s_per_million_deliveries, 2),
                opt(s.machine_busy_pct, 0),
                s.client_cpu_s,
            );
        }
        for s in self.steps.iter().filter(|s| !s.watched.is_empty()) {
            let parts: Vec<String> = s
                .watched
                .iter()
                .map(|w| {
                    format!(
                        "{} {} s (user {}, sys {})",
                        w.label,
                        opt(w.cpu_s, 2),
                        opt(w.user_s, 2),
                        opt(w.sys_s, 2)
                    )
                })
                .collect();
            println!("cpu at {}/s: {}", s.rate, parts.join(", "));
        }
        if !self.skipped_steps.is_empty() {
            println!(
                "skipped rates (p99 over --max-p99): {:?}",
                self.skipped_steps
            );
        }
        let t = &self.totals;
        println!(
            "messages: sent {}, acked {}, refused {}, unacked {}, skipped {}, deliveries {}",
            t.sent, t.acked, t.refused, t.unacked, t.skipped_sends, t.deliveries
        );
        println!(
            "loss: lost {}{}, duplicated {}, reordered {}, unrecovered {}, members not joined {}{}",
            t.lost,
            t.lost_acked
                .map(|a| format!(" ({a} of them acked)"))
                .unwrap_or_default(),
            t.duplicated,
            t.reordered,
            t.unrecovered,
            t.members_not_joined,
            if t.settled { "" } else { " (settle timed out)" }
        );
        for r in self
            .rooms_detail
            .iter()
            .filter(|r| r.lost > 0 || r.duplicated > 0)
            .take(10)
        {
            println!(
                "  room {}: {} messages, lost {}, duplicated {}, {} of {} members with gaps",
                r.room, r.messages, r.lost, r.duplicated, r.members_with_gaps, r.members_joined
            );
        }
        println!(
            "connections: {} connects, {} disconnects, {} reconnects, {} open at the end, errors {:?}, closes {:?}",
            t.connects,
            t.disconnects,
            t.reconnects,
            self.open_at_end,
            t.errors_by_code,
            t.closes_by_reason
        );
        if t.resume_us.count > 0 {
            println!(
                "resumes: {}, close to rejoined p50 {} ms, p99 {} ms, max {} ms",
                t.resume_us.count,
                ms(t.resume_us.p50),
                ms(t.resume_us.p99),
                ms(t.resume_us.max)
            );
        }
        let frames: Vec<String> = t
            .frames_by_type
            .iter()
            .filter(|(_, f)| f.frames > 0)
            .map(|(k, f)| format!("{k} {}", f.frames))
            .collect();
        println!("frames received: {}", frames.join(", "));
        println!(
            "publisher lag behind schedule: p99 {} ms, max {} ms",
            ms(self.send_lag_us.p99),
            ms(self.send_lag_us.max)
        );
        if let Some(s) = &self.server {
            println!(
                "server {:?}: RSS {} KiB -> {} KiB, {} B per connection",
                s.pids,
                s.rss_before_kib,
                s.rss_after_kib,
                opt(s.rss_per_connection_bytes, 0)
            );
        }
        let failures = self.failures(self.steps.iter().any(|s| s.rate > 0.0));
        if failures.is_empty() {
            println!("result: ok");
        } else {
            println!("result: FAILED: {}", failures.join("; "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(wire: Option<WireCounts>) -> JoinStormInput {
        let rec = Recorder::new(1, 1);
        rec.frame(FrameKind::Welcome, 40);
        rec.frame(FrameKind::Joined, 5000);
        rec.frame(FrameKind::Presence, 100);
        JoinStormInput {
            tcp_bytes_acked: Some((1000, 1000 + 1500)),
            sessions: 1,
            handshake_seconds: 0.1,
            joined: 1,
            join_seconds: 0.2,
            storm_seconds: 0.3,
            quiet: true,
            frames: rec.frame_counts(),
            wire,
        }
    }

    #[test]
    fn storm_wire_bytes_are_the_received_ones_with_deflate() {
        // Without deflate: payloads and computed headers, the welcome left out.
        let plain = JoinStorm::new(input(None), None);
        assert_eq!(plain.bytes, 5100);
        assert_eq!(plain.wire_bytes, 5000 + 4 + 100 + 2);
        assert_eq!(plain.uncompressed_wire_bytes, plain.wire_bytes);
        assert!(!plain.deflate && !plain.deflate_offered);
        assert_eq!(plain.compressed_frames, 0);
        // With deflate: the bytes the shim counted, first frames (welcomes) left out; the
        // decoded figures stay beside them.
        let wire = WireCounts {
            handshakes_agreed: 1,
            handshakes_refused: 0,
            frames: 3,
            wire_bytes: 42 + 1356 + 102,
            first_frame_wire_bytes: 42,
            compressed_frames: 1,
            compressed_wire_bytes: 1356,
            decoded_bytes: 5000,
        };
        let d = JoinStorm::new(input(Some(wire)), None);
        assert!(d.deflate && d.deflate_offered);
        assert_eq!(d.wire_bytes, 1356 + 102);
        assert_eq!(d.bytes, 5100, "payload bytes stay as decoded");
        assert_eq!(d.uncompressed_wire_bytes, plain.wire_bytes);
        assert_eq!((d.compressed_frames, d.decoded_bytes), (1, 5000));
        assert_eq!(d.server_tcp_over_wire, Some(round(1500.0 / 1458.0, 3)));
        let json = serde_json::to_value(&d).unwrap();
        for k in [
            "wire_bytes",
            "bytes",
            "frames_by_type",
            "server_tcp_over_wire",
            "deflate",
            "compressed_frames",
            "compressed_wire_bytes",
            "decoded_bytes",
            "uncompressed_wire_bytes",
        ] {
            assert!(json.get(k).is_some(), "{k}");
        }
        // Offered, refused: the real bytes still, and `deflate` false.
        let refused = WireCounts {
            handshakes_agreed: 0,
            handshakes_refused: 1,
            ..wire
        };
        let r = JoinStorm::new(input(Some(refused)), None);
        assert!(r.deflate_offered && !r.deflate);
    }
}
