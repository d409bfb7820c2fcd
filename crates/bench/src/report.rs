//! The bench report: one JSON document (`--json`, for scripts) or a table for people.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::stats::{Recorder, Summary};
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
    pub duplicated: u64,
    pub reordered: u64,
    pub unrecovered: u64,
}

/// Run-wide counters.
#[derive(Serialize, Debug)]
pub struct Totals {
    pub sent: u64,
    pub acked: u64,
    /// Sends whose connection closed before the ack (with --resume, these may or may not
    /// have been published; either way members' ledgers stay exact).
    pub unacked: u64,
    /// Sends not made because the connection was down or still joining.
    pub skipped_sends: u64,
    pub deliveries: u64,
    /// Missing deliveries over all members (a member expects every message published to its
    /// room after it joined).
    pub lost: u64,
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
    pub foreign_messages: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub closes_by_reason: BTreeMap<String, u64>,
    /// Whether the settle wait ended with every send acked and deliveries quiet.
    pub settled: bool,
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
            unacked: rec.unacked.load(Ordering::Relaxed),
            skipped_sends: rec.skipped_sends.load(Ordering::Relaxed),
            deliveries: rec
                .steps
                .iter()
                .map(|s| s.deliveries.load(Ordering::Relaxed))
                .sum(),
            lost: sum(|r| r.lost),
            duplicated: sum(|r| r.duplicated),
            reordered: sum(|r| r.reordered),
            unrecovered: sum(|r| r.unrecovered),
            members_not_joined: sum(|r| r.members_not_joined),
            connects: rec.connects.load(Ordering::Relaxed),
            connect_errors: rec.connect_errors.load(Ordering::Relaxed),
            join_errors: rec.join_errors.load(Ordering::Relaxed),
            disconnects: rec.disconnects.load(Ordering::Relaxed),
            reconnects: rec.reconnects.load(Ordering::Relaxed),
            foreign_messages: rec.foreign.load(Ordering::Relaxed),
            errors_by_code: rec.errors(),
            closes_by_reason: rec.closes(),
            settled,
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
    pub rooms_detail: Vec<RoomReport>,
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
            "messages: sent {}, acked {}, unacked {}, skipped {}, deliveries {}",
            t.sent, t.acked, t.unacked, t.skipped_sends, t.deliveries
        );
        println!(
            "loss: lost {}, duplicated {}, reordered {}, unrecovered {}, members not joined {}{}",
            t.lost,
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
            "connections: {} connects, {} disconnects, {} reconnects, errors {:?}, closes {:?}",
            t.connects, t.disconnects, t.reconnects, t.errors_by_code, t.closes_by_reason
        );
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
