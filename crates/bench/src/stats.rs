//! Shared measurement state of one bench run (latency histograms per rate step, counters,
//! room ledgers) and server-side sampling from `/proc` (CPU time and RSS of the gateway
//! processes only, so the load generator sharing the cores does not blur the figures).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::ledger::RoomLedger;

/// Highest latency the histograms hold (60 s, in microseconds); larger values saturate.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"))
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic in another bench task must not hide the measurements.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Measurements of one rate step (messages are attributed by the step in their payload).
pub struct StepRec {
    latency: Mutex<Histogram<u64>>,
    cross: Mutex<Histogram<u64>>,
    pub deliveries: AtomicU64,
    pub cross_deliveries: AtomicU64,
    pub sent: AtomicU64,
}

impl StepRec {
    fn new() -> Self {
        StepRec {
            latency: Mutex::new(histogram()),
            cross: Mutex::new(histogram()),
            deliveries: AtomicU64::new(0),
            cross_deliveries: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }
}

/// Everything the connection tasks report into.
pub struct Recorder {
    pub steps: Vec<StepRec>,
    pub rooms: Vec<Mutex<RoomLedger>>,
    pub connects: AtomicU64,
    pub connect_errors: AtomicU64,
    pub reconnects: AtomicU64,
    pub disconnects: AtomicU64,
    pub acked: AtomicU64,
    /// Sends whose connection closed before the ack arrived.
    pub unacked: AtomicU64,
    /// Sends the pacer scheduled while the connection was down or not joined.
    pub skipped_sends: AtomicU64,
    pub in_flight: AtomicU64,
    pub join_errors: AtomicU64,
    pub foreign: AtomicU64,
    pub last_delivery_us: AtomicU64,
    /// Connections whose rooms are all joined (first time).
    pub ready: AtomicUsize,
    /// Connections that gave up before being ready.
    pub failed: AtomicUsize,
    /// Time between the pacer scheduling a send and the connection writing it.
    send_lag: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
    first_connect_error: Mutex<Option<String>>,
}

impl Recorder {
    pub fn new(steps: usize, rooms: usize) -> Self {
        Recorder {
            steps: (0..steps).map(|_| StepRec::new()).collect(),
            rooms: (0..rooms)
                .map(|_| Mutex::new(RoomLedger::default()))
                .collect(),
            connects: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            unacked: AtomicU64::new(0),
            skipped_sends: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            join_errors: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            send_lag: Mutex::new(histogram()),
            errors: Mutex::new(BTreeMap::new()),
            closes: Mutex::new(BTreeMap::new()),
            first_connect_error: Mutex::new(None),
        }
    }

    /// Records one delivery of a bench message.
    pub fn delivery(&self, step: usize, latency_us: u64, cross: bool, now_us: u64) {
        self.last_delivery_us.store(now_us, Ordering::Relaxed);
        let Some(s) = self.steps.get(step) else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        s.deliveries.fetch_add(1, Ordering::Relaxed);
        let latency_us = latency_us.max(1);
        lock(&s.latency).saturating_record(latency_us);
        if cross {
            s.cross_deliveries.fetch_add(1, Ordering::Relaxed);
            lock(&s.cross).saturating_record(latency_us);
        }
    }

    pub fn send_lag(&self, lag_us: u64) {
        lock(&self.send_lag).saturating_record(lag_us.max(1));
    }

    pub fn error_code(&self, code: &str) {
        *lock(&self.errors).entry(code.to_string()).or_default() += 1;
    }

    pub fn close(&self, reason: String) {
        *lock(&self.closes).entry(reason).or_default() += 1;
    }

    pub fn connect_error(&self, e: String) {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
        lock(&self.first_connect_error).get_or_insert(e);
    }

    pub fn room(&self, room: usize) -> std::sync::MutexGuard<'_, RoomLedger> {
        lock(&self.rooms[room])
    }

    pub fn step_latency(&self, step: usize) -> (Summary, Summary) {
        let s = &self.steps[step];
        (Summary::of(&lock(&s.latency)), Summary::of(&lock(&s.cross)))
    }

    pub fn all_latency(&self) -> Summary {
        let mut all = histogram();
        for s in &self.steps {
            let _ = all.add(&*lock(&s.latency));
        }
        Summary::of(&all)
    }

    pub fn send_lag_summary(&self) -> Summary {
        Summary::of(&lock(&self.send_lag))
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        lock(&self.errors).clone()
    }

    pub fn closes(&self) -> BTreeMap<String, u64> {
        lock(&self.closes).clone()
    }

    pub fn first_connect_error(&self) -> Option<String> {
        lock(&self.first_connect_error).clone()
    }
}

/// Latency percentiles in microseconds.
#[derive(Serialize, Debug, Clone, Default)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// CPU time and memory of the server processes at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerSample {
    /// utime + stime of all processes, in clock ticks.
    pub cpu_ticks: u64,
    /// utime alone (user space; on loopback the system time also carries the kernel's
    /// receive path of the client sockets).
    pub user_ticks: u64,
    /// Sum of VmRSS, KiB.
    pub rss_kib: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status` of the given processes.
#[derive(Debug, Clone)]
pub struct ServerProbe {
    pids: Vec<u32>,
    ticks_per_second: f64,
}

impl ServerProbe {
    pub fn new(pids: Vec<u32>) -> Self {
        let ticks_per_second = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0);
        ServerProbe {
            pids,
            ticks_per_second,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    pub fn sample(&self) -> ServerSample {
        let mut s = ServerSample::default();
        for pid in &self.pids {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                && let Some((user, system)) = user_system_ticks(&stat)
            {
                s.cpu_ticks += user + system;
                s.user_ticks += user;
            }
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                s.rss_kib += vm_rss_kib(&status).unwrap_or(0);
            }
        }
        s
    }

    /// CPU seconds between two samples.
    pub fn cpu_seconds(&self, before: ServerSample, after: ServerSample) -> f64 {
        self.ticks_to_seconds(after.cpu_ticks.saturating_sub(before.cpu_ticks))
    }

    /// User-space CPU seconds between two samples.
    pub fn user_seconds(&self, before: ServerSample, after: ServerSample) -> f64 {
        self.ticks_to_seconds(after.user_ticks.saturating_sub(before.user_ticks))
    }

    pub fn ticks_to_seconds(&self, ticks: u64) -> f64 {
        ticks as f64 / self.ticks_per_second
    }
}

/// A process accounted on its own (`--watch-pid LABEL=PID`, e.g. one Redis shard): its
/// CPU time is reported per step, apart from the server figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchPid {
    pub label: String,
    pub pid: u32,
}

impl std::str::FromStr for WatchPid {
    type Err = String;

    /// `LABEL=PID`, or a bare `PID` (labelled with the PID).
    fn from_str(s: &str) -> Result<Self, String> {
        let (label, pid) = match s.split_once('=') {
            Some((l, p)) => (l.trim(), p.trim()),
            None => (s.trim(), s.trim()),
        };
        let pid = pid
            .parse::<u32>()
            .map_err(|_| format!("{s:?} is not LABEL=PID"))?;
        if label.is_empty() {
            return Err(format!("{s:?}: empty label"));
        }
        Ok(WatchPid {
            label: label.to_string(),
            pid,
        })
    }
}

/// (utime, stime) of one process, clock ticks; `None` when it is gone.
pub fn process_user_system_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    user_system_ticks(&stat)
}

/// Whole-machine CPU counters from the first line of `/proc/stat` (all cores), and this
/// process's own CPU time: to tell how busy the machine was during a step and how much of
/// it the load generator itself used.
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineSample {
    pub busy_ticks: u64,
    pub total_ticks: u64,
    pub self_ticks: u64,
}

impl MachineSample {
    pub fn now() -> Self {
        let mut m = MachineSample::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/stat")
            && let Some(line) = stat.lines().next()
        {
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            m.total_ticks = v.iter().take(8).sum();
            // idle (4th) and iowait (5th) are not busy.
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            m.busy_ticks = m.total_ticks.saturating_sub(idle);
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            m.self_ticks = cpu_ticks(&stat).unwrap_or(0);
        }
        m
    }

    /// Busy share of all cores between two samples, percent.
    pub fn busy_pct(before: Self, after: Self) -> Option<f64> {
        let total = after.total_ticks.saturating_sub(before.total_ticks);
        (total > 0).then(|| {
            after.busy_ticks.saturating_sub(before.busy_ticks) as f64 * 100.0 / total as f64
        })
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// may contain spaces, so fields are counted after its closing parenthesis.
fn cpu_ticks(stat: &str) -> Option<u64> {
    user_system_ticks(stat).map(|(u, s)| u + s)
}

/// (utime, stime) of a `/proc/<pid>/stat` line.
fn user_system_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_after_the_command_name() {
        let stat = "42 (my proc) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_ticks(stat), Some(300));
    }

    #[test]
    fn parses_watch_pids() {
        let w: WatchPid = "redis-7000=123".parse().unwrap();
        assert_eq!(
            w,
            WatchPid {
                label: "redis-7000".into(),
                pid: 123
            }
        );
        assert_eq!("45".parse::<WatchPid>().unwrap().label, "45");
        assert!("redis=x".parse::<WatchPid>().is_err());
        assert!("=12".parse::<WatchPid>().is_err());
        assert!(process_user_system_ticks(std::process::id()).is_some());
    }

    #[test]
    fn samples_this_process() {
        let p = ServerProbe::new(vec![std::process::id()]);
        let s = p.sample();
        assert!(s.rss_kib > 0);
    }
}
