//! One hostile connection: a TCP connect from a chosen loopback source address, the
//! opening handshake (now and then a broken one), a burst of hostile frames written while
//! a reader task records what the gateway answers (error codes, its close code, how the
//! socket ended), and an ending: a clean close, a half-close (shutdown of the write side),
//! an abrupt reset (SO_LINGER 0, so the kernel sends RST) or an abandoned socket.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::frames::{self, Ctx, Frame, Kind};

/// Longest a write, the handshake's answer or the wait for the gateway's close may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an ending waits for the gateway to close its side.
const CLOSE_WAIT: Duration = Duration::from_secs(3);
/// Largest server frame the reader accepts (anything above is reported as an anomaly).
const MAX_SERVER_FRAME: u64 = 64 << 20;

/// A gateway endpoint.
pub(crate) struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

/// What the run shares between its workers.
pub(crate) struct Shared {
    pub targets: Vec<Target>,
    pub sources: Vec<IpAddr>,
    pub max_frames_per_conn: usize,
    pub max_frame: usize,
    pub bomb: Arc<Vec<u8>>,
    /// Hostile frames written so far (all workers): one per step, a fragmented message
    /// counting once; what `--frames` counts.
    pub sent: AtomicU64,
    /// Frames written on the wire so far (every fragment and interleaved ping counts).
    pub wire_sent: AtomicU64,
    pub connections: AtomicU64,
    pub target_frames: u64,
    pub deadline: Instant,
}

impl Shared {
    pub(crate) fn done(&self) -> bool {
        self.sent.load(Ordering::Relaxed) >= self.target_frames || Instant::now() >= self.deadline
    }
}

/// Counts of one worker (merged at the end).
#[derive(Default)]
pub(crate) struct Counts {
    /// Steps written whole, by kind (a fragmented message counts once).
    pub frames: BTreeMap<&'static str, u64>,
    /// Wire frames written, by the kind of the step they belong to.
    pub wire_frames: BTreeMap<&'static str, u64>,
    pub handshakes: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
    pub endings: BTreeMap<&'static str, u64>,
    pub server_frames: BTreeMap<String, u64>,
    pub write_errors: BTreeMap<String, u64>,
    pub connect_failures: BTreeMap<String, u64>,
    pub anomalies: BTreeMap<String, u64>,
    pub connections: u64,
    pub upgraded: u64,
    pub deflate: u64,
}

pub(crate) fn bump<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, n: u64) {
    *map.entry(key).or_insert(0) += n;
}

fn merge<K: Ord>(into: &mut BTreeMap<K, u64>, from: BTreeMap<K, u64>) {
    for (k, v) in from {
        bump(into, k, v);
    }
}

impl Counts {
    pub(crate) fn merge(&mut self, o: Counts) {
        merge(&mut self.frames, o.frames);
        merge(&mut self.wire_frames, o.wire_frames);
        merge(&mut self.handshakes, o.handshakes);
        merge(&mut self.errors, o.errors);
        merge(&mut self.closes, o.closes);
        merge(&mut self.endings, o.endings);
        merge(&mut self.server_frames, o.server_frames);
        merge(&mut self.write_errors, o.write_errors);
        merge(&mut self.connect_failures, o.connect_failures);
        merge(&mut self.anomalies, o.anomalies);
        self.connections += o.connections;
        self.upgraded += o.upgraded;
        self.deflate += o.deflate;
    }
}

fn io_kind(e: &std::io::Error) -> String {
    format!("{:?}", e.kind()).to_lowercase()
}

/// The opening handshakes tried, by name: the good one (with or without a
/// permessage-deflate offer) and broken ones.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Handshake {
    Good,
    GoodDeflate,
    BadVersion,
    NoKey,
    Post,
    NoUpgrade,
    Garbage,
    HugeHeader,
    CutShort,
}

impl Handshake {
    fn name(self) -> &'static str {
        match self {
            Handshake::Good => "upgrade",
            Handshake::GoodDeflate => "upgrade_offering_deflate",
            Handshake::BadVersion => "bad_version",
            Handshake::NoKey => "no_key",
            Handshake::Post => "post",
            Handshake::NoUpgrade => "no_upgrade_headers",
            Handshake::Garbage => "garbage",
            Handshake::HugeHeader => "huge_header",
            Handshake::CutShort => "cut_short",
        }
    }

    fn pick(rng: &mut StdRng) -> Self {
        if rng.random_bool(0.95) {
            return if rng.random_bool(0.4) {
                Handshake::GoodDeflate
            } else {
                Handshake::Good
            };
        }
        *[
            Handshake::BadVersion,
            Handshake::NoKey,
            Handshake::Post,
            Handshake::NoUpgrade,
            Handshake::Garbage,
            Handshake::HugeHeader,
            Handshake::CutShort,
        ]
        .choose(rng)
        .unwrap_or(&Handshake::Garbage)
    }

    fn request(self, target: &Target, rng: &mut StdRng) -> Vec<u8> {
        let key = base64::engine::general_purpose::STANDARD.encode(rng.random::<[u8; 16]>());
        let (host, path) = (&target.host, &target.path);
        let good = |extra: &str| {
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
            )
        };
        let text = match self {
            Handshake::Good => good(""),
            Handshake::GoodDeflate => {
                good("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
            }
            Handshake::BadVersion => good("").replace("Version: 13", "Version: 8"),
            Handshake::NoKey => good("").replace(&format!("Sec-WebSocket-Key: {key}\r\n"), ""),
            Handshake::Post => good("").replacen("GET", "POST", 1),
            Handshake::NoUpgrade => format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            Handshake::Garbage => {
                let mut g: Vec<u8> = (0..rng.random_range(1..400))
                    .map(|_| rng.random())
                    .collect();
                g.extend_from_slice(b"\r\n\r\n");
                return g;
            }
            Handshake::HugeHeader => good(&format!(
                "X-Pad: {}\r\n",
                "a".repeat(rng.random_range(9000..40_000))
            )),
            Handshake::CutShort => {
                let full = good("");
                let cut = rng.random_range(1..full.len());
                return full.as_bytes()[..cut].to_vec();
            }
        };
        text.into_bytes()
    }
}

/// Reads an HTTP response head; returns (status or a word for what happened, head, rest).
async fn read_head(rd: &mut (impl AsyncReadExt + Unpin)) -> (String, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let rest = buf[end + 4..].to_vec();
            let status = head
                .split_whitespace()
                .nth(1)
                .unwrap_or("unparseable")
                .to_string();
            return (status, head, rest);
        }
        if buf.len() > 16 * 1024 {
            return ("head_too_long".into(), String::new(), Vec::new());
        }
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Err(_) => return ("timeout".into(), String::new(), Vec::new()),
            Ok(Ok(0)) => return ("closed".into(), String::new(), Vec::new()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return (io_kind(&e), String::new(), Vec::new()),
        }
    }
}

/// What the reader saw of the gateway.
#[derive(Default)]
struct ReaderOut {
    errors: BTreeMap<String, u64>,
    server_frames: BTreeMap<String, u64>,
    anomalies: BTreeMap<String, u64>,
    /// The close code of the gateway's close frame (`no_code` for an empty one).
    close: Option<String>,
    /// How reading ended: eof, reset, error, stopped (by us), bad_frame.
    end: &'static str,
}

/// Parses one server frame at the start of `buf`: (frame length, opcode, fin, rsv1,
/// payload range), or None when incomplete; Err for a frame the reader refuses.
type Parsed = (usize, u8, bool, bool, std::ops::Range<usize>);
fn parse_server_frame(buf: &[u8]) -> Result<Option<Parsed>, &'static str> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b1 & 0x80 != 0 {
        return Err("masked_server_frame");
    }
    let (len, mut at) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > MAX_SERVER_FRAME {
        return Err("huge_server_frame");
    }
    let len = len as usize;
    if buf.len() < at + len {
        return Ok(None);
    }
    let range = at..at + len;
    at += len;
    Ok(Some((at, b0 & 0x0f, b0 & 0x80 != 0, b0 & 0x40 != 0, range)))
}

async fn reader(
    mut rd: OwnedReadHalf,
    mut buf: Vec<u8>,
    mut stop: oneshot::Receiver<()>,
) -> ReaderOut {
    let mut out = ReaderOut {
        end: "eof",
        ..Default::default()
    };
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        loop {
            match parse_server_frame(&buf) {
                Ok(Some((n, opcode, fin, rsv1, range))) => {
                    let payload = &buf[range];
                    match opcode {
                        frames::OP_TEXT if rsv1 => {
                            bump(&mut out.server_frames, "compressed".into(), 1)
                        }
                        frames::OP_TEXT if !fin => {
                            bump(&mut out.server_frames, "fragment".into(), 1)
                        }
                        frames::OP_TEXT => {
                            match serde_json::from_slice::<serde_json::Value>(payload) {
                                Ok(v) => {
                                    let ty = v["type"].as_str().unwrap_or("no_type").to_string();
                                    if ty == "error" {
                                        let code =
                                            v["code"].as_str().unwrap_or("no_code").to_string();
                                        bump(&mut out.errors, code, 1);
                                    }
                                    bump(&mut out.server_frames, ty, 1);
                                }
                                Err(_) => {
                                    bump(&mut out.anomalies, "server_text_not_json".into(), 1)
                                }
                            }
                        }
                        frames::OP_CLOSE => {
                            out.close = Some(if payload.len() >= 2 {
                                u16::from_be_bytes([payload[0], payload[1]]).to_string()
                            } else {
                                "no_code".into()
                            });
                            bump(&mut out.server_frames, "close".into(), 1);
                        }
                        frames::OP_PING => bump(&mut out.server_frames, "ping".into(), 1),
                        frames::OP_PONG => bump(&mut out.server_frames, "pong".into(), 1),
                        other => bump(&mut out.anomalies, format!("server_opcode_{other}"), 1),
                    }
                    buf.drain(..n);
                }
                Ok(None) => break,
                Err(what) => {
                    bump(&mut out.anomalies, what.into(), 1);
                    out.end = "bad_frame";
                    return out;
                }
            }
        }
        tokio::select! {
            _ = &mut stop => {
                out.end = "stopped";
                return out;
            }
            r = rd.read(&mut chunk) => match r {
                Ok(0) => {
                    out.end = "eof";
                    return out;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    out.end = if e.kind() == std::io::ErrorKind::ConnectionReset { "reset" } else { "error" };
                    return out;
                }
            }
        }
    }
}

/// How a connection ends from our side.
#[derive(Clone, Copy)]
enum Ending {
    Clean,
    HalfClose,
    Reset,
    Abandon,
}

impl Ending {
    fn name(self) -> &'static str {
        match self {
            Ending::Clean => "close_frame_1000",
            Ending::HalfClose => "half_close",
            Ending::Reset => "reset",
            Ending::Abandon => "abandon",
        }
    }
}

/// Runs one connection from connect to its ending, counting into `counts`.
pub(crate) async fn run(shared: &Shared, rng: &mut StdRng, counts: &mut Counts) {
    let Some(target) = shared.targets.choose(rng) else {
        return;
    };
    let Some(source) = shared.sources.choose(rng).copied() else {
        return;
    };
    let socket = match TcpSocket::new_v4() {
        Ok(s) => s,
        Err(e) => {
            bump(&mut counts.connect_failures, io_kind(&e), 1);
            return;
        }
    };
    if let Err(e) = socket.bind(SocketAddr::new(source, 0)) {
        bump(
            &mut counts.connect_failures,
            format!("bind_{}", io_kind(&e)),
            1,
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        return;
    }
    let stream = match tokio::time::timeout(IO_TIMEOUT, socket.connect(target.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            bump(&mut counts.connect_failures, io_kind(&e), 1);
            tokio::time::sleep(Duration::from_millis(20)).await;
            return;
        }
        Err(_) => {
            bump(&mut counts.connect_failures, "timeout".into(), 1);
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    counts.connections += 1;
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let (mut rd, mut wr) = stream.into_split();

    let hs = Handshake::pick(rng);
    let request = hs.request(target, rng);
    if let Err(e) = wr.write_all(&request).await {
        bump(
            &mut counts.handshakes,
            format!("{}: write {}", hs.name(), io_kind(&e)),
            1,
        );
        return;
    }
    if hs == Handshake::CutShort {
        // Half a request, then a reset.
        bump(&mut counts.handshakes, format!("{}: reset", hs.name()), 1);
        let _ = socket2::SockRef::from(wr.as_ref()).set_linger(Some(Duration::ZERO));
        return;
    }
    let (status, head, rest) = read_head(&mut rd).await;
    bump(
        &mut counts.handshakes,
        format!("{}: {status}", hs.name()),
        1,
    );
    if status != "101" {
        return;
    }
    counts.upgraded += 1;
    let deflate = head.to_ascii_lowercase().contains("permessage-deflate");
    if deflate {
        counts.deflate += 1;
    }
    let ctx = Ctx {
        deflate,
        bomb: shared.bomb.clone(),
        max_frame: shared.max_frame,
    };
    let (stop_tx, stop_rx) = oneshot::channel();
    let mut read_task = tokio::spawn(reader(rd, rest, stop_rx));

    // The steps: non-fatal kinds, and half the time a fatal one last. A step counts as
    // sent once all its wire frames are written.
    let paced = rng.random_bool(0.1);
    let n = if paced {
        rng.random_range(1..=30)
    } else {
        rng.random_range(1..=shared.max_frames_per_conn.max(1))
    };
    let fatal_last = rng.random_bool(0.5);
    let mut last_kind = Kind::Valid;
    'frames: for i in 0..n {
        if shared.done() {
            break;
        }
        let kind = if fatal_last && i + 1 == n {
            *Kind::FATAL.choose(rng).unwrap_or(&Kind::Partial)
        } else {
            Kind::pick_non_fatal(rng)
        };
        let step = frames::generate(kind, &ctx, rng);
        last_kind = step.kind;
        for chunk in &step.chunks {
            match tokio::time::timeout(IO_TIMEOUT, wr.write_all(chunk)).await {
                Ok(Ok(())) => {
                    bump(&mut counts.wire_frames, kind.as_str(), 1);
                    shared.wire_sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    bump(&mut counts.write_errors, io_kind(&e), 1);
                    break 'frames;
                }
                Err(_) => {
                    bump(&mut counts.write_errors, "timeout".into(), 1);
                    break 'frames;
                }
            }
        }
        bump(&mut counts.frames, kind.as_str(), 1);
        shared.sent.fetch_add(1, Ordering::Relaxed);
        if step.fatal {
            break;
        }
        if paced {
            tokio::time::sleep(Duration::from_millis(rng.random_range(30..60))).await;
        }
    }

    // The ending (a cut-short frame is never followed by a close frame).
    let ending = if last_kind == Kind::Partial {
        *[Ending::HalfClose, Ending::Reset, Ending::Abandon]
            .choose(rng)
            .unwrap_or(&Ending::Reset)
    } else {
        *[
            Ending::Clean,
            Ending::HalfClose,
            Ending::Reset,
            Ending::Abandon,
        ]
        .choose(rng)
        .unwrap_or(&Ending::Clean)
    };
    bump(&mut counts.endings, ending.name(), 1);
    match ending {
        Ending::Clean => {
            let close = Frame::new(frames::OP_CLOSE, 1000u16.to_be_bytes().to_vec()).encode(rng);
            let _ = tokio::time::timeout(IO_TIMEOUT, wr.write_all(&close)).await;
        }
        Ending::HalfClose => {
            let _ = wr.shutdown().await;
        }
        Ending::Reset => {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..50))).await;
            let _ = socket2::SockRef::from(wr.as_ref()).set_linger(Some(Duration::ZERO));
        }
        Ending::Abandon => {}
    }
    let out = match ending {
        Ending::Clean | Ending::HalfClose => {
            match tokio::time::timeout(CLOSE_WAIT, &mut read_task).await {
                Ok(r) => r.ok(),
                Err(_) => {
                    let _ = stop_tx.send(());
                    read_task.await.ok()
                }
            }
        }
        Ending::Reset | Ending::Abandon => {
            let _ = stop_tx.send(());
            read_task.await.ok()
        }
    };
    drop(wr);
    let Some(out) = out else {
        bump(&mut counts.anomalies, "reader_task_failed".into(), 1);
        return;
    };
    merge(&mut counts.errors, out.errors);
    merge(&mut counts.server_frames, out.server_frames);
    merge(&mut counts.anomalies, out.anomalies);
    let close = match (out.close, out.end) {
        (Some(code), _) => code,
        (None, "stopped") => "none (we ended first)".into(),
        (None, "eof") => "none (eof)".into(),
        (None, "reset") => "none (reset)".into(),
        (None, other) => format!("none ({other})"),
    };
    bump(&mut counts.closes, close, 1);
}
