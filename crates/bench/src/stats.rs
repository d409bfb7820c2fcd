//! Shared measurement state of one bench run (latency histograms per rate step, counters,
//! room ledgers) and server-side sampling from `/proc` (CPU time and RSS of the gateway
//! processes only, so the load generator sharing the cores does not blur the figures).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::deflate::WireCounters;
use super::ledger::RoomLedger;
use super::wire::FrameKind;

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
    /// Sends answered with an error (`unavailable`, `rate_limited`, ...): refused, so not
    /// published (see `docs/protocol.md`), and never counted as lost.
    pub refused: AtomicU64,
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
    /// Connections whose first WebSocket handshake completed (`--join-at-once` waits for
    /// all of them before releasing the joins).
    pub sessions: AtomicUsize,
    /// Connections that had joined their rooms and were still open when the run stopped.
    pub open_at_stop: AtomicUsize,
    /// Every frame received, by kind (see [`FrameCounts`]).
    frames: FrameCounters,
    /// `--deflate`: the frames as they came over the wire (counted by the shim of every
    /// connection, see [`crate::deflate`]).
    pub wire: Arc<WireCounters>,
    /// Time between the pacer scheduling a send and the connection writing it.
    send_lag: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Refused sends by error code.
    refused_codes: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
    first_connect_error: Mutex<Option<String>>,
    /// `--resume`: time from a connection's close until all its rooms were joined again.
    resume_gap: Mutex<Histogram<u64>>,
    /// Time from writing a send until its answer (ack or error).
    answer: Mutex<Histogram<u64>>,
    /// `--timeline`: the run in fixed intervals of wall-clock time.
    pub timeline: Option<Timeline>,
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
            refused: AtomicU64::new(0),
            unacked: AtomicU64::new(0),
            skipped_sends: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            join_errors: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            open_at_stop: AtomicUsize::new(0),
            frames: FrameCounters::default(),
            wire: Arc::default(),
            send_lag: Mutex::new(histogram()),
            errors: Mutex::new(BTreeMap::new()),
            refused_codes: Mutex::new(BTreeMap::new()),
            closes: Mutex::new(BTreeMap::new()),
            first_connect_error: Mutex::new(None),
            resume_gap: Mutex::new(histogram()),
            answer: Mutex::new(histogram()),
            timeline: None,
        }
    }

    /// Keeps a [`Timeline`] of `interval` buckets (`--timeline`).
    pub fn with_timeline(mut self, interval: Option<std::time::Duration>) -> Self {
        self.timeline = interval.map(Timeline::new);
        self
    }

    /// Adds to the timeline's bucket of now (no-op without `--timeline`).
    pub fn tick(&self, f: impl FnOnce(&mut Bucket)) {
        if let Some(t) = &self.timeline {
            t.tick(super::wire::now_us(), f);
        }
    }

    /// Counts a send the server refused with an error `code`.
    pub fn refused(&self, code: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        *lock(&self.refused_codes)
            .entry(code.to_string())
            .or_default() += 1;
        self.tick(|b| b.refused += 1);
    }

    pub fn refused_by_code(&self) -> BTreeMap<String, u64> {
        lock(&self.refused_codes).clone()
    }

    /// Records one resume: `gap_us` from the close until every room was joined again.
    pub fn resumed(&self, gap_us: u64) {
        lock(&self.resume_gap).saturating_record(gap_us.max(1));
        self.tick(|b| b.resumed += 1);
    }

    /// Records how long a send waited for its answer (ack or error).
    pub fn answered(&self, wait_us: u64) {
        lock(&self.answer).saturating_record(wait_us.max(1));
    }

    pub fn answer_summary(&self) -> Summary {
        Summary::of(&lock(&self.answer))
    }

    pub fn resume_summary(&self) -> Summary {
        Summary::of(&lock(&self.resume_gap))
    }

    /// Records one delivery of a bench message.
    pub fn delivery(&self, step: usize, latency_us: u64, cross: bool, now_us: u64) {
        self.last_delivery_us.store(now_us, Ordering::Relaxed);
        let Some(s) = self.steps.get(step) else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        s.deliveries.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = &self.timeline {
            let sent_ms = now_us.saturating_sub(latency_us) / 1000;
            t.tick(now_us, |b| {
                b.deliveries += 1;
                b.newest_sent_ms = b.newest_sent_ms.max(sent_ms);
            });
        }
        let latency_us = latency_us.max(1);
        lock(&s.latency).saturating_record(latency_us);
        if cross {
            s.cross_deliveries.fetch_add(1, Ordering::Relaxed);
            lock(&s.cross).saturating_record(latency_us);
        }
    }

    /// Counts one frame received from a server: its kind and payload length.
    pub fn frame(&self, kind: FrameKind, payload_bytes: usize) {
        let f = &self.frames;
        let i = kind.index();
        f.frames[i].fetch_add(1, Ordering::Relaxed);
        f.bytes[i].fetch_add(payload_bytes as u64, Ordering::Relaxed);
        f.headers
            .fetch_add(ws_header_bytes(payload_bytes), Ordering::Relaxed);
        f.last_us.store(super::wire::now_us(), Ordering::Relaxed);
    }

    /// Records what a `joined` said about the room's size.
    pub fn joined_size(&self, listed: Option<usize>, member_count: Option<u64>) {
        if let Some(n) = listed {
            self.frames
                .max_members_listed
                .fetch_max(n as u64, Ordering::Relaxed);
        }
        if let Some(n) = member_count {
            self.frames.max_member_count.fetch_max(n, Ordering::Relaxed);
        }
    }

    /// Counts a presence summary (`"event":"summary"`).
    pub fn presence_summary(&self) {
        self.frames.summaries.fetch_add(1, Ordering::Relaxed);
    }

    /// Unix time (µs) of the last frame received, 0 before the first.
    pub fn last_frame_us(&self) -> u64 {
        self.frames.last_us.load(Ordering::Relaxed)
    }

    /// The frame counters now.
    pub fn frame_counts(&self) -> FrameCounts {
        let f = &self.frames;
        FrameCounts {
            frames: std::array::from_fn(|i| f.frames[i].load(Ordering::Relaxed)),
            bytes: std::array::from_fn(|i| f.bytes[i].load(Ordering::Relaxed)),
            header_bytes: f.headers.load(Ordering::Relaxed),
            presence_summaries: f.summaries.load(Ordering::Relaxed),
            max_members_listed: f.max_members_listed.load(Ordering::Relaxed),
            max_member_count: f.max_member_count.load(Ordering::Relaxed),
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

const KINDS: usize = FrameKind::ALL.len();

/// Frame counters by [`FrameKind`].
#[derive(Default)]
struct FrameCounters {
    frames: [AtomicU64; KINDS],
    /// WebSocket payload bytes.
    bytes: [AtomicU64; KINDS],
    /// WebSocket frame headers of all frames.
    headers: AtomicU64,
    summaries: AtomicU64,
    max_members_listed: AtomicU64,
    max_member_count: AtomicU64,
    last_us: AtomicU64,
}

/// A snapshot of the frames received so far, by [`FrameKind`] (index = `FrameKind::index`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCounts {
    pub frames: [u64; KINDS],
    /// WebSocket payload bytes (what the server serialized).
    pub bytes: [u64; KINDS],
    /// WebSocket frame headers of all those frames.
    pub header_bytes: u64,
    pub presence_summaries: u64,
    /// Largest `members` list in a `joined` (not a difference in [`FrameCounts::since`]).
    pub max_members_listed: u64,
    /// Largest `member_count` in a `joined` (likewise).
    pub max_member_count: u64,
}

impl FrameCounts {
    /// What arrived between `before` and `self`.
    pub fn since(&self, before: &FrameCounts) -> FrameCounts {
        FrameCounts {
            frames: std::array::from_fn(|i| self.frames[i].saturating_sub(before.frames[i])),
            bytes: std::array::from_fn(|i| self.bytes[i].saturating_sub(before.bytes[i])),
            header_bytes: self.header_bytes.saturating_sub(before.header_bytes),
            presence_summaries: self
                .presence_summaries
                .saturating_sub(before.presence_summaries),
            max_members_listed: self.max_members_listed,
            max_member_count: self.max_member_count,
        }
    }

    pub fn total_frames(&self) -> u64 {
        self.frames.iter().sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.bytes.iter().sum()
    }

    /// Bytes on the wire from the server: payloads plus WebSocket frame headers (server
    /// frames are unmasked: 2 bytes, 4 from 126 bytes of payload, 10 from 64 KiB), assuming
    /// one frame per message, as the gateway writes them. Comparable to the server's
    /// `wchar` (which also holds HTTP upgrade answers and whatever else it wrote). Payloads
    /// count as decoded: with permessage-deflate (`--deflate`) this is what the wire would
    /// have carried uncompressed; the bytes that did are [`crate::deflate::WireCounts`].
    pub fn wire_bytes(&self) -> u64 {
        self.total_bytes() + self.header_bytes
    }

    /// `(kind name, frames, bytes)` for every kind.
    pub fn by_kind(&self) -> impl Iterator<Item = (&'static str, u64, u64)> + '_ {
        FrameKind::ALL
            .iter()
            .map(|k| (k.name(), self.frames[k.index()], self.bytes[k.index()]))
    }
}

/// Length of the header of an unmasked WebSocket frame carrying `payload` bytes.
pub fn ws_header_bytes(payload: usize) -> u64 {
    match payload {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    }
}

/// `--timeline`: counters per fixed interval of wall-clock time, so a script that injects a
/// fault at a known instant can see when sends were refused, when deliveries stopped and
/// when they came back.
pub struct Timeline {
    /// Unix time of the first bucket's start, µs.
    start_us: u64,
    interval_us: u64,
    buckets: Mutex<Vec<Bucket>>,
}

/// One interval of the [`Timeline`].
#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Unix time of the interval's start, milliseconds.
    pub t_ms: u64,
    /// Sends written.
    pub sent: u64,
    pub acked: u64,
    /// Sends answered with an error.
    pub refused: u64,
    /// Deliveries of bench messages received in the interval.
    pub deliveries: u64,
    /// The newest send time (Unix ms) among those deliveries, 0 when none: the first
    /// interval after a fault whose value is past the fault is when delivery came back.
    pub newest_sent_ms: u64,
    /// Connections that closed.
    pub disconnects: u64,
    /// Connections that had all their rooms joined again after a close (`--resume`).
    pub resumed: u64,
    /// `joined` answers with `recovered: false`.
    pub unrecovered: u64,
}

impl Timeline {
    pub fn new(interval: std::time::Duration) -> Self {
        let interval_us = (interval.as_micros() as u64).max(1_000);
        let now = super::wire::now_us();
        Timeline {
            start_us: now - now % interval_us,
            interval_us,
            buckets: Mutex::new(Vec::new()),
        }
    }

    pub fn interval_ms(&self) -> u64 {
        self.interval_us / 1000
    }

    /// Applies `f` to the bucket of `now_us` (created, with the empty ones before it).
    pub fn tick(&self, now_us: u64, f: impl FnOnce(&mut Bucket)) {
        let i = (now_us.saturating_sub(self.start_us) / self.interval_us) as usize;
        let mut b = lock(&self.buckets);
        while b.len() <= i {
            let t_ms = (self.start_us + b.len() as u64 * self.interval_us) / 1000;
            b.push(Bucket {
                t_ms,
                ..Bucket::default()
            });
        }
        f(&mut b[i]);
    }

    pub fn buckets(&self) -> Vec<Bucket> {
        lock(&self.buckets).clone()
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
    /// Sum of VmHWM (peak RSS since the process started), KiB.
    pub hwm_kib: u64,
    /// Sum of `wchar` from `/proc/<pid>/io`: bytes the processes passed to write system
    /// calls (sockets and files alike); `None` when a process's `io` was unreadable.
    pub wchar: Option<u64>,
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
        let mut s = ServerSample {
            wchar: Some(0),
            ..ServerSample::default()
        };
        for pid in &self.pids {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                && let Some((user, system)) = user_system_ticks(&stat)
            {
                s.cpu_ticks += user + system;
                s.user_ticks += user;
            }
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                s.rss_kib += vm_rss_kib(&status).unwrap_or(0);
                s.hwm_kib += status_kib(&status, "VmHWM:").unwrap_or(0);
            }
            let wchar = std::fs::read_to_string(format!("/proc/{pid}/io"))
                .ok()
                .and_then(|io| io_field(&io, "wchar:"));
            s.wchar = s.wchar.zip(wchar).map(|(a, b)| a + b);
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
    status_kib(status, "VmRSS:")
}

/// A `Name:   123 kB` line of `/proc/<pid>/status`, KiB.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Bytes the local TCP sockets listening-side of `port` sent and had acknowledged, summed
/// over the established connections (`tcpi_bytes_acked`, read with `ss -tin`): what a
/// server on this machine wrote to its clients' sockets, whatever system call it used
/// (`wchar` of /proc/PID/io counts `write(2)` but not `send(2)`, which Rust's `TcpStream`
/// uses). Connections closed meanwhile drop out of the sum. `None` without `ss`.
pub fn tcp_bytes_acked(port: u16) -> Option<u64> {
    let out = std::process::Command::new("ss")
        .args([
            "-tinH",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(sum_bytes_acked(&String::from_utf8_lossy(&out.stdout)))
}

/// Sum of the `bytes_acked:N` fields of `ss -ti` output.
fn sum_bytes_acked(ss: &str) -> u64 {
    ss.split_whitespace()
        .filter_map(|w| w.strip_prefix("bytes_acked:"))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// A `name: 123` line of `/proc/<pid>/io`.
fn io_field(io: &str, name: &str) -> Option<u64> {
    let line = io.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_buckets_fill_the_intervals_in_between() {
        let t = Timeline::new(std::time::Duration::from_millis(100));
        let start = t.start_us;
        t.tick(start + 10_000, |b| b.sent += 1);
        t.tick(start + 250_000, |b| {
            b.deliveries += 1;
            b.newest_sent_ms = 7;
        });
        let b = t.buckets();
        assert_eq!(b.len(), 3, "intervals 0, 1 (empty) and 2");
        assert_eq!((b[0].sent, b[1].sent, b[2].deliveries), (1, 0, 1));
        assert_eq!(b[2].t_ms, (start + 200_000) / 1000);
        assert_eq!(b[2].newest_sent_ms, 7);
    }

    #[test]
    fn refused_sends_are_counted_by_code() {
        let rec = Recorder::new(1, 1).with_timeline(Some(std::time::Duration::from_secs(1)));
        rec.refused("unavailable");
        rec.refused("unavailable");
        rec.refused("rate_limited");
        assert_eq!(rec.refused.load(Ordering::Relaxed), 3);
        assert_eq!(rec.refused_by_code()["unavailable"], 2);
        let refused: u64 = rec
            .timeline
            .as_ref()
            .unwrap()
            .buckets()
            .iter()
            .map(|b| b.refused)
            .sum();
        assert_eq!(refused, 3);
    }

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
        assert!(s.hwm_kib >= s.rss_kib);
        assert!(s.wchar.is_some(), "own /proc/self/io is readable");
    }

    #[test]
    fn reads_proc_io_and_status_fields() {
        let io = "rchar: 10\nwchar: 4096\nsyscr: 1\n";
        assert_eq!(io_field(io, "wchar:"), Some(4096));
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(2048));
        assert_eq!(vm_rss_kib(status), Some(1024));
    }

    #[test]
    fn sums_bytes_acked_of_ss_output() {
        let ss = "0 0 127.0.0.1:8080 127.0.0.1:5000\n\t cubic wscale:7,7 bytes_sent:120 bytes_acked:121 bytes_received:40 segs_out:3\n0 0 127.0.0.1:8080 127.0.0.1:5001\n\t cubic bytes_acked:1000 bytes_received:4\n";
        assert_eq!(sum_bytes_acked(ss), 1121);
    }

    #[test]
    fn counts_frames_by_kind_with_headers() {
        let rec = Recorder::new(1, 1);
        let before = rec.frame_counts();
        rec.frame(FrameKind::Presence, 100);
        rec.frame(FrameKind::Joined, 200);
        rec.frame(FrameKind::Presence, 70_000);
        rec.joined_size(Some(100), Some(5000));
        let d = rec.frame_counts().since(&before);
        assert_eq!(d.frames[FrameKind::Presence.index()], 2);
        assert_eq!(d.total_frames(), 3);
        assert_eq!(d.total_bytes(), 70_300);
        assert_eq!(d.wire_bytes(), 70_300 + 2 + 4 + 10);
        assert_eq!(d.max_member_count, 5000);
        assert_eq!(ws_header_bytes(125), 2);
        assert_eq!(ws_header_bytes(126), 4);
    }
}
