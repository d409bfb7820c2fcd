//! Kernel floor of one delivery: the CPU a sender spends per delivered WebSocket frame
//! when it does nothing but write one pre-encoded frame per delivery to a loopback TCP
//! socket. No server writing one frame per delivery can pay less on the same machine, so
//! "Socket.IO CPU per delivery / floor" is the highest ratio any such server could reach
//! against Socket.IO there. `scripts/bench floor` runs it; BENCHMARKS.md describes it.
//!
//! ```text
//! cargo bench -p roomcast-bench --bench kernel_floor -- [--connections 2000] [--members 100]
//!     [--rates 20000,40000,80000] [--seconds 5] [--warmup 1] [--reader-threads 2] [--json]
//! ```
//!
//! Setup, all in this process: `--connections` loopback TCP connections to a listener of
//! its own. The accepted ends are the "server" sockets (`TCP_NODELAY`, like the gateway).
//! The client ends are read by a tokio multi-thread runtime (`--reader-threads` workers,
//! default 2, like the load generator's `Runtime::new()` on this 2-core machine): one task
//! per connection reads and discards bytes, counting them so every step can check that
//! every frame arrived.
//!
//! The sender is ONE dedicated OS thread owning the server ends as blocking
//! `std::net::TcpStream`s. Per delivery it makes one `write` of a pre-encoded 100-byte
//! WebSocket text frame (`0x81, 98, payload`), which is one `sendto` system call, as the
//! gateway makes per delivery. Blocking sockets: with 100-byte frames and readers draining,
//! the send buffer never fills, so a write never blocks and costs what a non-blocking write
//! costs; and there is no readiness machinery (epoll) to pay for, which keeps this a floor.
//! Writes go out like the real fan-out: one publish = the frame written to `--members`
//! consecutive sockets (one "room"), publishes round-robin over the sockets, paced so the
//! step delivers `rate` frames per second for `--seconds`; between publishes the thread
//! sleeps until the next publish is due.
//!
//! Measured per step: the sender thread's utime and stime (`/proc/thread-self/stat`,
//! fields 14 and 15, in `getconf CLK_TCK` ticks), its on-CPU nanoseconds
//! (`/proc/thread-self/schedstat`, a finer cross-check of utime + stime), the whole
//! process's utime + stime (readers included), and the machine's busy and softirq shares
//! (`/proc/stat`). On loopback the sender's `sendto` also runs the receiving socket's TCP
//! receive path (softirq in the sender's context) and the wake-up of the reader: with
//! `CONFIG_IRQ_TIME_ACCOUNTING` off (as on the measuring VM) that time is charged to the
//! sender's stime, exactly as it is charged to a gateway's, whose CPU `roomcast-bench
//! --server-pid` reads from the same `/proc` fields.
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::io::AsyncReadExt;

/// Size of the pre-encoded frame on the wire: 2 header bytes + 98 payload bytes.
const FRAME_BYTES: usize = 100;
/// Linux errno values for "too many open files" (per process, system-wide).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
/// How long the readers may take to receive everything sent before a step counts as failed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

const USAGE: &str = "\
kernel_floor: CPU a sender thread spends per delivered 100-byte WebSocket frame on loopback TCP

usage: cargo bench -p roomcast-bench --bench kernel_floor -- [options]
  --connections N      loopback TCP connections (default 2000; 2 descriptors each)
  --members M          sockets written per publish, one \"room\" (default 100)
  --rates R1,R2,...    delivery rates, frames per second, one step each (default 20000,40000,80000)
  --seconds S          seconds per step (default 5)
  --warmup S           unreported warm-up at the first rate before the steps (default 1; 0 = none)
  --reader-threads T   tokio worker threads reading the client ends (default 2)
  --json               print one JSON object on stdout (the table goes to stderr)
Unknown arguments (such as cargo's --bench) are ignored.";

#[derive(Clone, Debug)]
struct Args {
    connections: usize,
    members: usize,
    rates: Vec<f64>,
    seconds: f64,
    warmup: f64,
    reader_threads: usize,
    json: bool,
}

enum Parsed {
    Run(Args),
    Help,
}

fn parse_args(argv: impl IntoIterator<Item = String>) -> anyhow::Result<Parsed> {
    let mut a = Args {
        connections: 2000,
        members: 100,
        rates: vec![20_000.0, 40_000.0, 80_000.0],
        seconds: 5.0,
        warmup: 1.0,
        reader_threads: 2,
        json: false,
    };
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let takes_value = matches!(
            flag.as_str(),
            "--connections"
                | "--members"
                | "--rates"
                | "--seconds"
                | "--warmup"
                | "--reader-threads"
        );
        let value = if takes_value {
            match inline {
                Some(v) => v,
                None => it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?,
            }
        } else {
            String::new()
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--json" => a.json = true,
            "--connections" => a.connections = parse_num(&flag, &value)?,
            "--members" => a.members = parse_num(&flag, &value)?,
            "--reader-threads" => a.reader_threads = parse_num(&flag, &value)?,
            "--seconds" => a.seconds = parse_num(&flag, &value)?,
            "--warmup" => a.warmup = parse_num(&flag, &value)?,
            "--rates" => {
                a.rates = value
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| parse_num::<f64>(&flag, s.trim()))
                    .collect::<anyhow::Result<_>>()?;
            }
            // cargo bench passes --bench; a filter string may follow too.
            "--bench" => {}
            other => eprintln!("kernel_floor: ignoring unknown argument {other}"),
        }
    }
    if a.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if a.members == 0 {
        bail!("--members must be at least 1");
    }
    a.members = a.members.min(a.connections);
    if a.reader_threads == 0 {
        bail!("--reader-threads must be at least 1");
    }
    if a.rates.is_empty() || a.rates.iter().any(|r| !r.is_finite() || *r <= 0.0) {
        bail!("--rates needs one or more positive delivery rates");
    }
    if !a.seconds.is_finite() || a.seconds <= 0.0 {
        bail!("--seconds must be positive");
    }
    if !a.warmup.is_finite() || a.warmup < 0.0 {
        bail!("--warmup must be 0 or more");
    }
    Ok(Parsed::Run(a))
}

fn parse_num<T: std::str::FromStr>(flag: &str, v: &str) -> anyhow::Result<T> {
    v.parse()
        .map_err(|_| anyhow!("{flag}: {v:?} is not a valid number"))
}

/// The pre-encoded frame: FIN + text opcode, 7-bit payload length, a message-like JSON text.
fn encode_frame() -> Vec<u8> {
    let payload_len = FRAME_BYTES - 2;
    let head = br#"{"type":"message","room":"room-0","id":"1795000000000-0","from":"c0","text":""#;
    let tail = br#""}"#;
    assert!(
        payload_len < 126,
        "the frame must fit a 7-bit payload length"
    );
    assert!(
        head.len() + tail.len() <= payload_len,
        "frame template too long"
    );
    let mut f = Vec::with_capacity(FRAME_BYTES);
    f.push(0x81);
    f.push(payload_len as u8);
    f.extend_from_slice(head);
    f.resize(FRAME_BYTES - tail.len(), b'x');
    f.extend_from_slice(tail);
    debug_assert_eq!(f.len(), FRAME_BYTES);
    f
}

/// utime and stime, clock ticks.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    user: u64,
    sys: u64,
}

/// Fields 14 and 15 of a `/proc/.../stat` file, counted after the `)` that ends the
/// command name (which may contain spaces and parentheses).
fn read_cpu(path: &str) -> anyhow::Result<Cpu> {
    let s = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    let after = s
        .rfind(')')
        .map(|i| &s[i + 1..])
        .ok_or_else(|| anyhow!("{path}: no ')' in {s:?}"))?;
    // After the name come field 3 (state), 4, ...: field 14 is index 11.
    let mut f = after.split_whitespace().skip(11);
    let mut next = |name: &str| -> anyhow::Result<u64> {
        f.next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("{path}: no {name} field"))
    };
    let user = next("utime")?;
    let sys = next("stime")?;
    Ok(Cpu { user, sys })
}

/// First field of `/proc/thread-self/schedstat`: nanoseconds on CPU (None when absent).
fn read_oncpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whole machine, clock ticks summed over all CPUs (`cpu` line of `/proc/stat`).
#[derive(Clone, Copy, Debug, Default)]
struct Machine {
    total: u64,
    busy: u64,
    softirq: u64,
}

fn read_machine() -> Option<Machine> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some(Machine {
        total,
        busy: total - v[3] - v[4],
        softirq: v[6],
    })
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Everything read at the start and at the end of a step. Read from the sender thread.
struct Snapshot {
    at: Instant,
    thread: Cpu,
    oncpu_ns: Option<u64>,
    process: Cpu,
    machine: Option<Machine>,
}

fn snapshot() -> anyhow::Result<Snapshot> {
    Ok(Snapshot {
        thread: read_cpu("/proc/thread-self/stat")?,
        oncpu_ns: read_oncpu_ns(),
        process: read_cpu("/proc/self/stat")?,
        machine: read_machine(),
        at: Instant::now(),
    })
}

#[derive(Clone, Debug)]
struct Step {
    rate: f64,
    deliveries: u64,
    seconds: f64,
    sender_user_s: f64,
    sender_sys_s: f64,
    sender_oncpu_s: Option<f64>,
    process_cpu_s: f64,
    machine_busy_pct: Option<f64>,
    machine_softirq_s: Option<f64>,
}

impl Step {
    fn sender_cpu_s(&self) -> f64 {
        self.sender_user_s + self.sender_sys_s
    }
    fn per_delivery_us(&self, s: f64) -> f64 {
        if self.deliveries == 0 {
            return 0.0;
        }
        s * 1e6 / self.deliveries as f64
    }
    fn deliveries_per_s(&self) -> f64 {
        self.deliveries as f64 / self.seconds
    }
    /// The sender delivered at least 95% of the asked rate (it was not CPU-bound).
    fn kept_up(&self) -> bool {
        self.deliveries_per_s() >= 0.95 * self.rate
    }
}

/// The sender thread: owns the server ends, writes, measures itself.
struct Sender {
    socks: Vec<TcpStream>,
    frame: Vec<u8>,
    members: usize,
    cursor: usize,
    sent_bytes: u64,
    received: Arc<AtomicU64>,
    tick: f64,
}

impl Sender {
    /// One publish: the frame written to `members` consecutive sockets (one `sendto` each).
    fn publish(&mut self) -> anyhow::Result<()> {
        let n = self.socks.len();
        for _ in 0..self.members {
            let i = self.cursor;
            self.socks[i]
                .write_all(&self.frame)
                .with_context(|| format!("write to server socket {i}"))?;
            self.cursor = if i + 1 == n { 0 } else { i + 1 };
        }
        self.sent_bytes += (self.members * self.frame.len()) as u64;
        Ok(())
    }

    /// Runs `rate` deliveries per second for `seconds`, then waits (outside the measured
    /// window) until the readers received every byte sent so far.
    fn step(&mut self, rate: f64, seconds: f64) -> anyhow::Result<Step> {
        let publishes = ((rate * seconds / self.members as f64).round() as u64).max(1);
        let interval = self.members as f64 / rate;
        let s0 = snapshot()?;
        for k in 0..publishes {
            sleep_until(s0.at + Duration::from_secs_f64(k as f64 * interval));
            self.publish()?;
        }
        // The step lasts its planned time unless the writes fell behind.
        sleep_until(s0.at + Duration::from_secs_f64(publishes as f64 * interval));
        let s1 = snapshot()?;
        self.wait_drained()?;
        let ticks = |a: u64, b: u64| b.saturating_sub(a) as f64 / self.tick;
        let machine = s0.machine.zip(s1.machine).map(|(a, b)| {
            let total = b.total.saturating_sub(a.total).max(1) as f64;
            (
                100.0 * b.busy.saturating_sub(a.busy) as f64 / total,
                ticks(a.softirq, b.softirq),
            )
        });
        Ok(Step {
            rate,
            deliveries: publishes * self.members as u64,
            seconds: (s1.at - s0.at).as_secs_f64(),
            sender_user_s: ticks(s0.thread.user, s1.thread.user),
            sender_sys_s: ticks(s0.thread.sys, s1.thread.sys),
            sender_oncpu_s: s0
                .oncpu_ns
                .zip(s1.oncpu_ns)
                .map(|(a, b)| b.saturating_sub(a) as f64 / 1e9),
            process_cpu_s: ticks(
                s0.process.user + s0.process.sys,
                s1.process.user + s1.process.sys,
            ),
            machine_busy_pct: machine.map(|m| m.0),
            machine_softirq_s: machine.map(|m| m.1),
        })
    }

    fn wait_drained(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let got = self.received.load(Ordering::Relaxed);
            if got >= self.sent_bytes {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the readers received {got} of {} bytes sent within {DRAIN_TIMEOUT:?}",
                    self.sent_bytes
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn sleep_until(due: Instant) {
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// A client end: read and discard, like a WebSocket client receiving frames.
async fn drain(mut stream: tokio::net::TcpStream, received: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

fn socket_error(e: io::Error, what: &str, opened: usize, want: usize) -> anyhow::Error {
    match e.raw_os_error() {
        Some(EMFILE) => anyhow!(
            "{what} failed after {opened} of {want} connections: too many open files (EMFILE). \
             Each connection takes 2 descriptors in this process (client and server end): \
             raise the limit first (e.g. `ulimit -n {}`) or pass a smaller --connections",
            2 * want + 64
        ),
        Some(ENFILE) => anyhow!(
            "{what} failed after {opened} of {want} connections: the system-wide open file \
             table is full (ENFILE)"
        ),
        _ => {
            anyhow::Error::new(e).context(format!("{what} (after {opened} of {want} connections)"))
        }
    }
}

/// Opens the connections; returns the server ends and spawns a reader per client end.
fn open_connections(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    received: &Arc<AtomicU64>,
) -> anyhow::Result<Vec<TcpStream>> {
    let want = args.connections;
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| socket_error(e, "listen on 127.0.0.1", 0, want))?;
    let addr: SocketAddr = listener.local_addr().context("listener address")?;
    let mut servers = Vec::with_capacity(want);
    for i in 0..want {
        // Connect, then accept it: one pending connection at a time pairs the two ends.
        let client = TcpStream::connect(addr).map_err(|e| socket_error(e, "connect", i, want))?;
        let (server, _) = listener
            .accept()
            .map_err(|e| socket_error(e, "accept", i, want))?;
        server
            .set_nodelay(true)
            .context("TCP_NODELAY on a server end")?;
        client
            .set_nodelay(true)
            .context("TCP_NODELAY on a client end")?;
        client
            .set_nonblocking(true)
            .context("make a client end non-blocking")?;
        let client = {
            let _rt = rt.enter();
            tokio::net::TcpStream::from_std(client).context("register a client end with tokio")?
        };
        rt.spawn(drain(client, Arc::clone(received)));
        servers.push(server);
    }
    Ok(servers)
}

fn run(args: &Args) -> anyhow::Result<Vec<Step>> {
    let tick = clock_ticks_per_second();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.reader_threads)
        .thread_name("floor-reader")
        .enable_all()
        .build()
        .context("start the reader runtime")?;
    let received = Arc::new(AtomicU64::new(0));
    let socks = open_connections(args, &rt, &received)?;
    let mut sender = Sender {
        socks,
        frame: encode_frame(),
        members: args.members,
        cursor: 0,
        sent_bytes: 0,
        received,
        tick,
    };
    let a = args.clone();
    let handle = std::thread::Builder::new()
        .name("floor-sender".into())
        .spawn(move || -> anyhow::Result<Vec<Step>> {
            if a.warmup > 0.0 {
                sender.step(a.rates[0], a.warmup).context("warm-up")?;
            }
            let mut steps = Vec::with_capacity(a.rates.len());
            for &rate in &a.rates {
                let step = sender
                    .step(rate, a.seconds)
                    .with_context(|| format!("step {rate} deliveries/s"))?;
                if !a.json {
                    eprintln!(
                        "kernel_floor: {rate} deliveries/s done: {:.2} µs sender CPU per delivery",
                        step.per_delivery_us(step.sender_cpu_s())
                    );
                }
                steps.push(step);
            }
            // Dropping the server ends closes them: the readers see EOF and finish.
            drop(sender);
            Ok(steps)
        })
        .context("start the sender thread")?;
    let steps = handle
        .join()
        .map_err(|_| anyhow!("the sender thread panicked"))??;
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(steps)
}

fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

fn print_table(out: &mut dyn Write, args: &Args, steps: &[Step]) -> io::Result<()> {
    writeln!(
        out,
        "kernel floor: {} loopback TCP connections, {} sockets per publish, {} B frames; \
         sender: one thread, blocking std TcpStream, one write per delivery; readers: tokio, \
         {} worker thread(s); {} core(s)",
        args.connections,
        args.members,
        FRAME_BYTES,
        args.reader_threads,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    )?;
    let hdr = [
        "rate/s",
        "deliveries",
        "deliv/s",
        "sender µs/deliv",
        "user µs",
        "sys µs",
        "on-cpu µs",
        "process µs/deliv",
        "softirq µs",
        "machine busy%",
    ];
    let rows: Vec<[String; 10]> = steps
        .iter()
        .map(|s| {
            let behind = if s.kept_up() { "" } else { " (behind)" };
            [
                format!("{:.0}", s.rate),
                s.deliveries.to_string(),
                format!("{:.0}{behind}", s.deliveries_per_s()),
                format!("{:.2}", s.per_delivery_us(s.sender_cpu_s())),
                format!("{:.2}", s.per_delivery_us(s.sender_user_s)),
                format!("{:.2}", s.per_delivery_us(s.sender_sys_s)),
                fmt_opt(s.sender_oncpu_s.map(|c| s.per_delivery_us(c)), 2),
                format!("{:.2}", s.per_delivery_us(s.process_cpu_s)),
                fmt_opt(s.machine_softirq_s.map(|c| s.per_delivery_us(c)), 2),
                fmt_opt(s.machine_busy_pct, 0),
            ]
        })
        .collect();
    let widths: Vec<usize> = hdr
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    writeln!(out, "{}", line(&hdr.map(String::from)))?;
    for r in &rows {
        writeln!(out, "{}", line(r))?;
    }
    writeln!(
        out,
        "sender µs/deliv = utime + stime of the sender thread per delivery (user µs + sys µs); \
         on-cpu = /proc/thread-self/schedstat; process = every thread of this \
         process (readers included); softirq = whole machine"
    )
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn to_json(args: &Args, steps: &[Step]) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = steps
        .iter()
        .map(|s| {
            serde_json::json!({
                "rate": s.rate,
                "deliveries": s.deliveries,
                "seconds": round(s.seconds, 3),
                "sender_cpu_s": round(s.sender_cpu_s(), 3),
                "sender_user_s": round(s.sender_user_s, 3),
                "sender_sys_s": round(s.sender_sys_s, 3),
                "us_per_delivery": round(s.per_delivery_us(s.sender_cpu_s()), 3),
                "user_us_per_delivery": round(s.per_delivery_us(s.sender_user_s), 3),
                "sys_us_per_delivery": round(s.per_delivery_us(s.sender_sys_s), 3),
                "deliveries_per_s": round(s.deliveries_per_s(), 1),
                "kept_up": s.kept_up(),
                "sender_oncpu_s": s.sender_oncpu_s.map(|c| round(c, 4)),
                "oncpu_us_per_delivery": s.sender_oncpu_s.map(|c| round(s.per_delivery_us(c), 3)),
                "process_cpu_s": round(s.process_cpu_s, 3),
                "process_us_per_delivery": round(s.per_delivery_us(s.process_cpu_s), 3),
                "machine_softirq_us_per_delivery":
                    s.machine_softirq_s.map(|c| round(s.per_delivery_us(c), 3)),
                "machine_busy_pct": s.machine_busy_pct.map(|b| round(b, 1)),
            })
        })
        .collect();
    serde_json::json!({
        "connections": args.connections,
        "members": args.members,
        "frame_bytes": FRAME_BYTES,
        "reader_threads": args.reader_threads,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "sender": "one OS thread, blocking std::net::TcpStream, one write (sendto) per delivery",
        "steps": steps,
    })
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kernel_floor: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let steps = match run(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kernel_floor: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let printed = if args.json {
        print_table(&mut io::stderr(), &args, &steps).and_then(|()| {
            let mut out = io::stdout().lock();
            writeln!(out, "{:#}", to_json(&args, &steps))
        })
    } else {
        print_table(&mut io::stdout().lock(), &args, &steps)
    };
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kernel_floor: cannot print the results: {e}");
            ExitCode::FAILURE
        }
    }
}
