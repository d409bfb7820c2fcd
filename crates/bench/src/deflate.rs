//! `--deflate`: the client side of WebSocket `permessage-deflate` (RFC 7692) for a bench
//! whose WebSocket library (tungstenite) has none. [`Inflate`] sits between tungstenite and
//! the TCP socket: writes pass straight through (the bench sends uncompressed, which the
//! RFC allows); reads are parsed frame by frame, and a compressed message (RSV1 set) is
//! inflated and handed to tungstenite as the same message, uncompressed, RSV1 clear. Every
//! other frame passes through byte for byte. The shim also counts what really came over
//! the wire ([`WireCounters`]): the raw frame bytes, the compressed frames and what they
//! inflated to, for the report's `wire_bytes`.
//!
//! Built for thousands of connections: an idle shim holds no buffer (the compressed
//! payload, the inflated message and bytes read past it are allocated per message and
//! freed once passed on), and the inflater is one per thread, reset for every message (no
//! context takeover: both sides agree to compress each message on its own).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use flate2::{Decompress, FlushDecompress, Status};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The `Sec-WebSocket-Extensions` offer of the bench's handshake.
pub const OFFER: &str =
    "permessage-deflate; client_no_context_takeover; server_no_context_takeover";

/// Largest message the shim inflates (bytes after inflation); beyond it the read fails.
pub const MAX_INFLATED: usize = 16 << 20;

/// What the sender strips from the end of every compressed message (RFC 7692 7.2.1) and
/// the receiver appends before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Most bytes of the HTTP response head kept to read its extensions.
const MAX_RESPONSE_HEAD: usize = 16 << 10;

/// Room reserved before an inflated payload for the header of the frame that carries it.
const HEADER_ROOM: usize = 10;

/// Whether the value of a `Sec-WebSocket-Extensions` response header accepts
/// permessage-deflate (one of its comma-separated extensions is named so).
pub fn agrees(value: &str) -> bool {
    value.split(',').any(|ext| {
        ext.split(';')
            .next()
            .is_some_and(|name| name.trim().eq_ignore_ascii_case("permessage-deflate"))
    })
}

/// Whether an HTTP response head (status line and header lines) accepts permessage-deflate.
fn head_agrees(head: &[u8]) -> bool {
    String::from_utf8_lossy(head)
        .split("\r\n")
        .skip(1)
        .any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("sec-websocket-extensions") && agrees(value)
            })
        })
}

/// What the `--deflate` connections received, shared by all of them (each shim adds its
/// counts once per read, not per frame).
#[derive(Debug, Default)]
pub struct WireCounters {
    handshakes_agreed: AtomicU64,
    handshakes_refused: AtomicU64,
    frames: AtomicU64,
    wire_bytes: AtomicU64,
    first_frame_wire_bytes: AtomicU64,
    compressed_frames: AtomicU64,
    compressed_wire_bytes: AtomicU64,
    decoded_bytes: AtomicU64,
}

impl WireCounters {
    /// Counts one completed handshake: whether the server agreed to permessage-deflate.
    pub fn handshake(&self, agreed: bool) {
        let c = if agreed {
            &self.handshakes_agreed
        } else {
            &self.handshakes_refused
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> WireCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WireCounts {
            handshakes_agreed: l(&self.handshakes_agreed),
            handshakes_refused: l(&self.handshakes_refused),
            frames: l(&self.frames),
            wire_bytes: l(&self.wire_bytes),
            first_frame_wire_bytes: l(&self.first_frame_wire_bytes),
            compressed_frames: l(&self.compressed_frames),
            compressed_wire_bytes: l(&self.compressed_wire_bytes),
            decoded_bytes: l(&self.decoded_bytes),
        }
    }

    fn add(&self, c: &WireCounts) {
        let add = |a: &AtomicU64, n: u64| {
            if n > 0 {
                a.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&self.frames, c.frames);
        add(&self.wire_bytes, c.wire_bytes);
        add(&self.first_frame_wire_bytes, c.first_frame_wire_bytes);
        add(&self.compressed_frames, c.compressed_frames);
        add(&self.compressed_wire_bytes, c.compressed_wire_bytes);
        add(&self.decoded_bytes, c.decoded_bytes);
    }
}

/// A snapshot of [`WireCounters`] (the report's `deflate` section).
#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireCounts {
    /// Handshakes whose answer accepted permessage-deflate (a total, also in
    /// [`WireCounts::since`]).
    pub handshakes_agreed: u64,
    /// Handshakes answered without it (likewise a total).
    pub handshakes_refused: u64,
    /// WebSocket frames received.
    pub frames: u64,
    /// Their bytes as they came over the wire: headers and payloads, compressed ones as
    /// compressed (the HTTP response of the handshake is not counted).
    pub wire_bytes: u64,
    /// The part of `wire_bytes` that was the first frame of a connection: the greeting
    /// the server writes right after the handshake (roomcast's `welcome`).
    pub first_frame_wire_bytes: u64,
    /// Frames of compressed messages (RSV1), and their bytes on the wire (headers and
    /// compressed payloads).
    pub compressed_frames: u64,
    pub compressed_wire_bytes: u64,
    /// Payload bytes those messages inflated to.
    pub decoded_bytes: u64,
}

impl WireCounts {
    /// What arrived between `before` and `self` (handshake counts stay totals).
    pub fn since(&self, before: &WireCounts) -> WireCounts {
        WireCounts {
            handshakes_agreed: self.handshakes_agreed,
            handshakes_refused: self.handshakes_refused,
            frames: self.frames.saturating_sub(before.frames),
            wire_bytes: self.wire_bytes.saturating_sub(before.wire_bytes),
            first_frame_wire_bytes: self
                .first_frame_wire_bytes
                .saturating_sub(before.first_frame_wire_bytes),
            compressed_frames: self
                .compressed_frames
                .saturating_sub(before.compressed_frames),
            compressed_wire_bytes: self
                .compressed_wire_bytes
                .saturating_sub(before.compressed_wire_bytes),
            decoded_bytes: self.decoded_bytes.saturating_sub(before.decoded_bytes),
        }
    }

    /// Whether every handshake so far (at least one) accepted permessage-deflate.
    pub fn negotiated(&self) -> bool {
        self.handshakes_agreed > 0 && self.handshakes_refused == 0
    }
}

/// Where the read side is.
#[derive(Debug)]
enum Phase {
    /// The HTTP response of the handshake: passed through; `head` keeps it (up to
    /// [`MAX_RESPONSE_HEAD`]) to read its extensions, `matched` counts the bytes of the
    /// `\r\n\r\n` that ends it seen so far.
    Response { head: Vec<u8>, matched: u8 },
    /// Collecting a frame header (2 to 14 bytes; server frames are unmasked: at most 10).
    Header {
        buf: [u8; 14],
        have: u8,
        /// The frame belongs to a compressed message: its bytes are kept, not passed.
        collect: bool,
    },
    /// Inside a frame's payload.
    Payload {
        remaining: u64,
        collect: bool,
        fin: bool,
    },
}

/// A compressed message being received (several frames when the server fragments it).
#[derive(Debug)]
struct Compressed {
    opcode: u8,
    payload: Vec<u8>,
}

/// The permessage-deflate shim over a stream (see the module documentation).
#[derive(Debug)]
pub struct Inflate<S> {
    inner: S,
    counters: Arc<WireCounters>,
    limit: usize,
    phase: Phase,
    /// Whether the server's handshake answer accepted permessage-deflate (known once the
    /// response head is read; without it, RSV1 frames pass through and tungstenite refuses
    /// them, as it should).
    negotiated: bool,
    /// Whether a whole frame header was read already (the next one is not the first).
    past_first_frame: bool,
    message: Option<Compressed>,
    /// An inflated message (frame header from `out_pos`) not yet passed on.
    out: Vec<u8>,
    out_pos: usize,
    /// Bytes read after the end of a compressed message, processed once it is passed on.
    leftover: Vec<u8>,
    leftover_pos: usize,
}

impl<S> Inflate<S> {
    /// A shim over a stream that is about to carry the client handshake (its reads start
    /// with the HTTP response). Messages inflate up to [`MAX_INFLATED`] bytes.
    pub fn new(inner: S, counters: Arc<WireCounters>) -> Self {
        Inflate::with_limit(inner, counters, MAX_INFLATED)
    }

    /// Like [`Inflate::new`], with another cap on inflated messages.
    pub fn with_limit(inner: S, counters: Arc<WireCounters>, limit: usize) -> Self {
        Inflate {
            inner,
            counters,
            limit,
            phase: Phase::Response {
                head: Vec::new(),
                matched: 0,
            },
            negotiated: false,
            past_first_frame: false,
            message: None,
            out: Vec::new(),
            out_pos: 0,
            leftover: Vec::new(),
            leftover_pos: 0,
        }
    }

    /// Whether the server accepted permessage-deflate (false until its answer is read).
    pub fn negotiated(&self) -> bool {
        self.negotiated
    }

    /// Processes freshly read bytes in place: returns `(kept, consumed)`, where
    /// `data[..kept]` is what to pass on and `data[consumed..]` was not looked at because a
    /// compressed message ended just before (it is in `self.out` now).
    fn process(&mut self, data: &mut [u8]) -> io::Result<(usize, usize)> {
        let (mut r, mut w) = (0, 0);
        let mut counts = WireCounts::default();
        let result = loop {
            if r >= data.len() {
                break Ok(());
            }
            match &mut self.phase {
                Phase::Response { head, matched } => {
                    let b = data[r];
                    data[w] = b;
                    r += 1;
                    w += 1;
                    if head.len() < MAX_RESPONSE_HEAD {
                        head.push(b);
                    }
                    *matched = match (*matched, b) {
                        (0 | 2, b'\r') => *matched + 1,
                        (1 | 3, b'\n') => *matched + 1,
                        (_, b'\r') => 1,
                        _ => 0,
                    };
                    if *matched == 4 {
                        self.negotiated = head_agrees(head);
                        self.phase = Phase::Header {
                            buf: [0; 14],
                            have: 0,
                            collect: false,
                        };
                    }
                }
                Phase::Header { buf, have, collect } => {
                    let b = data[r];
                    r += 1;
                    if *have == 0 {
                        let opcode = b & 0x0f;
                        let rsv1 = b & 0x40 != 0;
                        if self.negotiated && self.message.is_some() && (opcode == 1 || opcode == 2)
                        {
                            break Err(invalid("a data frame inside a compressed message"));
                        }
                        *collect = self.negotiated
                            && match opcode {
                                1 | 2 => rsv1,
                                0 => self.message.is_some(),
                                _ => false,
                            };
                    }
                    buf[usize::from(*have)] = b;
                    *have += 1;
                    if !*collect {
                        data[w] = b;
                        w += 1;
                    }
                    let Some((header_len, payload_len)) = parse_header(&buf[..usize::from(*have)])
                    else {
                        continue;
                    };
                    counts.frames += 1;
                    counts.wire_bytes += header_len as u64;
                    if !self.past_first_frame {
                        self.past_first_frame = true;
                        counts.first_frame_wire_bytes += header_len as u64 + payload_len;
                    }
                    let (b0, b1, collect) = (buf[0], buf[1], *collect);
                    let fin = b0 & 0x80 != 0;
                    if collect {
                        if b1 & 0x80 != 0 {
                            break Err(invalid("a masked frame from the server"));
                        }
                        let so_far = self.message.as_ref().map_or(0, |m| m.payload.len());
                        let total = usize::try_from(payload_len)
                            .ok()
                            .and_then(|n| n.checked_add(so_far))
                            .filter(|n| *n <= self.limit);
                        let Some(total) = total else {
                            break Err(too_large(self.limit));
                        };
                        let m = self.message.get_or_insert_with(|| Compressed {
                            opcode: b0 & 0x0f,
                            payload: Vec::new(),
                        });
                        m.payload.reserve_exact(total - so_far + TAIL.len());
                        counts.compressed_frames += 1;
                        counts.compressed_wire_bytes += header_len as u64 + payload_len;
                    }
                    self.phase = Phase::Payload {
                        remaining: payload_len,
                        collect,
                        fin,
                    };
                    if payload_len == 0 {
                        match self.end_of_frame(&mut counts) {
                            Ok(false) => {}
                            Ok(true) => break Ok(()),
                            Err(e) => break Err(e),
                        }
                    }
                }
                Phase::Payload {
                    remaining,
                    collect,
                    fin: _,
                } => {
                    let n = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(data.len() - r);
                    if *collect {
                        if let Some(m) = self.message.as_mut() {
                            m.payload.extend_from_slice(&data[r..r + n]);
                        }
                    } else {
                        if w != r {
                            data.copy_within(r..r + n, w);
                        }
                        w += n;
                    }
                    r += n;
                    counts.wire_bytes += n as u64;
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        match self.end_of_frame(&mut counts) {
                            Ok(false) => {}
                            Ok(true) => break Ok(()),
                            Err(e) => break Err(e),
                        }
                    }
                }
            }
        };
        self.counters.add(&counts);
        result.map(|()| (w, r))
    }

    /// At the end of a frame's payload: back to reading headers; when the frame ended a
    /// compressed message, inflates it into `self.out` and returns true.
    fn end_of_frame(&mut self, counts: &mut WireCounts) -> io::Result<bool> {
        let (collect, fin) = match self.phase {
            Phase::Payload { collect, fin, .. } => (collect, fin),
            _ => (false, false),
        };
        self.phase = Phase::Header {
            buf: [0; 14],
            have: 0,
            collect: false,
        };
        if !(collect && fin) {
            return Ok(false);
        }
        let Some(m) = self.message.take() else {
            return Ok(false);
        };
        let (out, start) = inflate_message(m.opcode, m.payload, self.limit)?;
        counts.decoded_bytes += (out.len() - HEADER_ROOM) as u64;
        self.out = out;
        self.out_pos = start;
        Ok(true)
    }

    /// Passes on what is left of an inflated message (as much as `buf` holds).
    fn drain_out(&mut self, buf: &mut ReadBuf<'_>) {
        let pending = &self.out[self.out_pos.min(self.out.len())..];
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending[..n]);
        self.out_pos += n;
        if self.out_pos >= self.out.len() {
            self.out = Vec::new();
            self.out_pos = 0;
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("permessage-deflate: {what}"),
    )
}

fn too_large(limit: usize) -> io::Error {
    invalid(&format!("a compressed message over {limit} bytes"))
}

/// `(header length, payload length)` of a frame header once `h` holds all of it.
fn parse_header(h: &[u8]) -> Option<(usize, u64)> {
    let b1 = *h.get(1)?;
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let len = 2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 };
    if h.len() < len {
        return None;
    }
    let payload = match b1 & 0x7f {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
        n => u64::from(n),
    };
    Some((len, payload))
}

/// The header of an unmasked final frame: `(bytes, length)`.
pub fn frame_header(opcode: u8, rsv1: bool, payload: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | if rsv1 { 0x40 } else { 0 } | (opcode & 0x0f);
    match payload {
        0..=125 => {
            h[1] = payload as u8;
            (h, 2)
        }
        126..=65_535 => {
            h[1] = 126;
            h[2..4].copy_from_slice(&(payload as u16).to_be_bytes());
            (h, 4)
        }
        _ => {
            h[1] = 127;
            h[2..10].copy_from_slice(&(payload as u64).to_be_bytes());
            (h, 10)
        }
    }
}

thread_local! {
    /// One inflater per thread, reset for every message.
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// Inflates one message (`payload` without its tail) into an uncompressed final frame of
/// `opcode`: returns the buffer and where the frame starts in it (its payload starts at
/// [`HEADER_ROOM`]).
fn inflate_message(opcode: u8, mut payload: Vec<u8>, limit: usize) -> io::Result<(Vec<u8>, usize)> {
    payload.extend_from_slice(&TAIL);
    let max_len = HEADER_ROOM + limit + 1;
    let mut out = Vec::with_capacity((HEADER_ROOM + 64 + 4 * payload.len()).min(max_len));
    out.resize(HEADER_ROOM, 0);
    INFLATER.with_borrow_mut(|slot| {
        let d = slot.get_or_insert_with(|| Decompress::new(false));
        d.reset(false);
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= max_len {
                    return Err(too_large(limit));
                }
                let grow = out.capacity().min(max_len - out.len());
                out.reserve_exact(grow);
            }
            let (in0, out0) = (d.total_in(), out.len());
            let status = d
                .decompress_vec(&payload[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|e| invalid(&format!("bad compressed data: {e}")))?;
            consumed += usize::try_from(d.total_in() - in0).unwrap_or(usize::MAX);
            consumed = consumed.min(payload.len());
            if out.len() - HEADER_ROOM > limit {
                return Err(too_large(limit));
            }
            let progress = d.total_in() != in0 || out.len() != out0;
            match status {
                Status::StreamEnd => break,
                _ if consumed == payload.len() && out.len() < out.capacity() => break,
                _ if !progress && out.len() < out.capacity() => {
                    return Err(invalid("truncated compressed data"));
                }
                _ => {}
            }
        }
        Ok(())
    })?;
    let (h, n) = frame_header(opcode, false, out.len() - HEADER_ROOM);
    let start = HEADER_ROOM - n;
    out[start..HEADER_ROOM].copy_from_slice(&h[..n]);
    Ok((out, start))
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                this.drain_out(buf);
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            let from_leftover = this.leftover_pos < this.leftover.len();
            if from_leftover {
                let rest = &this.leftover[this.leftover_pos..];
                let n = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..n]);
                this.leftover_pos += n;
            } else {
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                if buf.filled().len() == before {
                    // End of stream: tungstenite tells a clean close from a cut one.
                    return Poll::Ready(Ok(()));
                }
            }
            let region = &mut buf.filled_mut()[before..];
            let total = region.len();
            let (kept, consumed) = this.process(region)?;
            if consumed < total {
                if from_leftover {
                    this.leftover_pos -= total - consumed;
                } else {
                    this.leftover = region[consumed..].to_vec();
                    this.leftover_pos = 0;
                }
            }
            if this.leftover_pos >= this.leftover.len() && !this.leftover.is_empty() {
                this.leftover = Vec::new();
                this.leftover_pos = 0;
            }
            buf.set_filled(before + kept);
            this.drain_out(buf);
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflate<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};
    use tokio::io::AsyncReadExt;

    const AGREED: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n";
    const REFUSED: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n";

    /// Raw DEFLATE of `data`, sync-flushed, without the trailing `00 00 ff ff`: a
    /// permessage-deflate payload as a server sends it.
    fn compress(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let done = usize::try_from(c.total_in()).unwrap();
            c.compress_vec(&data[done..], &mut out, FlushCompress::Sync)
                .unwrap();
            if c.total_in() as usize == data.len() && out.len() < out.capacity() {
                break;
            }
        }
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - TAIL.len());
        out
    }

    /// A server frame (unmasked) with first byte `b0`.
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let (h, n) = frame_header(b0 & 0x0f, false, payload.len());
        let mut f = h[..n].to_vec();
        f[0] = b0;
        f.extend_from_slice(payload);
        f
    }

    /// A compressed final text frame carrying `text`.
    fn compressed_text(text: &[u8]) -> Vec<u8> {
        frame(0x80 | 0x40 | 1, &compress(text))
    }

    fn text_frame(text: &[u8]) -> Vec<u8> {
        frame(0x81, text)
    }

    /// Text that does not compress much (so compressed payloads reach the long length forms).
    fn noise(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"abcdefghijklmnopqrstuvwxyz0123456789{}\":,"[(x % 41) as usize]
            })
            .collect()
    }

    /// An in-memory stream handing out at most `step` bytes per read, and answering
    /// every other read with `Pending` (waking itself) when `stall` is set.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        stall: bool,
        stalled: bool,
    }

    impl Trickle {
        fn new(data: Vec<u8>, step: usize, stall: bool) -> Self {
            Trickle {
                data,
                pos: 0,
                step,
                stall,
                stalled: false,
            }
        }
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if this.stall && !this.stalled {
                this.stalled = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.stalled = false;
            let n = this
                .step
                .min(this.data.len() - this.pos)
                .min(buf.remaining());
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    /// Reads the shim to its end with reads of at most `chunk` bytes.
    async fn read_all<S: AsyncRead + Unpin>(
        s: &mut Inflate<S>,
        chunk: usize,
    ) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn shim(input: Vec<u8>, step: usize, stall: bool) -> (Inflate<Trickle>, Arc<WireCounters>) {
        let counters = Arc::new(WireCounters::default());
        (
            Inflate::new(Trickle::new(input, step, stall), counters.clone()),
            counters,
        )
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn reads_the_agreement_from_the_answer() {
        assert!(agrees("permessage-deflate; server_no_context_takeover"));
        assert!(agrees("x-foo, Permessage-Deflate"));
        assert!(!agrees("x-permessage-deflate"));
        assert!(!agrees(""));
        assert!(head_agrees(AGREED));
        assert!(!head_agrees(REFUSED));
    }

    #[tokio::test]
    async fn compressed_frame_comes_out_as_the_same_text() {
        let text =
            br#"{"type":"presence","room":"bench-1","event":"join","user":"bench-42"}"#.repeat(20);
        let wire = compressed_text(&text);
        let (mut s, counters) = shim(cat(&[AGREED, &wire]), 1 << 16, false);
        let out = read_all(&mut s, 4096).await.unwrap();
        assert!(s.negotiated());
        assert_eq!(out, cat(&[AGREED, &text_frame(&text)]));
        let c = counters.snapshot();
        assert_eq!(c.frames, 1);
        assert_eq!(c.compressed_frames, 1);
        assert_eq!(
            c.wire_bytes,
            wire.len() as u64,
            "the response head is not counted"
        );
        assert_eq!(c.compressed_wire_bytes, wire.len() as u64);
        assert_eq!(c.decoded_bytes, text.len() as u64);
        assert_eq!(c.first_frame_wire_bytes, wire.len() as u64);
        assert!(wire.len() < text.len() / 4, "it did compress");
    }

    #[tokio::test]
    async fn frames_split_byte_by_byte_still_decode() {
        let big = noise(3000);
        let frames: Vec<Vec<u8>> = vec![
            text_frame(br#"{"type":"welcome"}"#),
            compressed_text(&br#"{"type":"joined","members":["a","b"]}"#.repeat(30)),
            frame(0x89, b"ping"),
            compressed_text(&big),
            text_frame(&noise(200)),
            compressed_text(b"x"),
            frame(0x88, &[0x03, 0xe8]),
        ];
        let expected: Vec<Vec<u8>> = vec![
            frames[0].clone(),
            text_frame(&br#"{"type":"joined","members":["a","b"]}"#.repeat(30)),
            frames[2].clone(),
            text_frame(&big),
            frames[4].clone(),
            text_frame(b"x"),
            frames[6].clone(),
        ];
        let input = cat(&[AGREED, &frames.concat()]);
        let want = cat(&[AGREED, &expected.concat()]);
        // One byte per read from the socket, with stalls, into buffers of several sizes
        // (smaller than a frame: the inflated message drains over several reads).
        for chunk in [1, 3, 7, 4096] {
            let (mut s, counters) = shim(input.clone(), 1, true);
            let out = read_all(&mut s, chunk).await.unwrap();
            assert_eq!(out, want, "reads of {chunk} bytes");
            let c = counters.snapshot();
            assert_eq!(c.frames, frames.len() as u64);
            assert_eq!(
                c.wire_bytes,
                frames.iter().map(Vec::len).sum::<usize>() as u64
            );
            assert_eq!(c.compressed_frames, 3);
            assert_eq!(c.first_frame_wire_bytes, frames[0].len() as u64);
        }
        // Many frames per read from the socket, into small buffers (bytes read past a
        // compressed message wait for it to be passed on).
        for (step, chunk) in [(5000, 10), (64, 100), (1 << 20, 1 << 20)] {
            let (mut s, _) = shim(input.clone(), step, false);
            assert_eq!(
                read_all(&mut s, chunk).await.unwrap(),
                want,
                "{step}/{chunk}"
            );
        }
    }

    #[tokio::test]
    async fn uncompressed_frames_pass_through_byte_identical() {
        let frames = [
            text_frame(br#"{"type":"welcome"}"#),
            text_frame(&noise(300)),     // 126 length form
            frame(0x82, &noise(70_000)), // 127 length form, binary
            frame(0x01, b"first half "), // an uncompressed fragmented message
            frame(0x89, b""),
            frame(0x80, b"second half"),
            frame(0x8a, b"pong"),
            frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e']),
        ]
        .concat();
        for head in [AGREED, REFUSED] {
            for (step, chunk) in [(1, 1), (1, 4096), (4096, 4096), (100_000, 13)] {
                let (mut s, counters) = shim(cat(&[head, &frames]), step, false);
                let out = read_all(&mut s, chunk).await.unwrap();
                assert_eq!(out, cat(&[head, &frames]));
                let c = counters.snapshot();
                assert_eq!(c.wire_bytes, frames.len() as u64);
                assert_eq!(c.frames, 8);
                assert_eq!(c.compressed_frames, 0);
            }
        }
        // Without agreement, a compressed frame is not inflated: it reaches tungstenite as
        // it came (and tungstenite refuses it).
        let wire = compressed_text(b"hello hello hello");
        let (mut s, _) = shim(cat(&[REFUSED, &wire]), 4096, false);
        assert_eq!(
            read_all(&mut s, 4096).await.unwrap(),
            cat(&[REFUSED, &wire])
        );
        assert!(!s.negotiated());
    }

    #[tokio::test]
    async fn long_length_forms_both_ways() {
        // Compressed payload in the 126 form, inflated one in the 127 form.
        let a = cat(&[&noise(1000), &vec![b' '; 100_000]]);
        let wa = compressed_text(&a);
        assert_eq!(wa[1], 126, "compressed payload of {} bytes", wa.len() - 4);
        // Compressed payload in the 127 form (over 64 KiB even compressed).
        let b = noise(120_000);
        let wb = compressed_text(&b);
        assert_eq!(wb[1], 127, "compressed payload of {} bytes", wb.len() - 10);
        let input = cat(&[AGREED, &wa, &wb]);
        let want = cat(&[AGREED, &text_frame(&a), &text_frame(&b)]);
        assert_eq!(text_frame(&a)[1], 127);
        for (step, chunk) in [(1 << 20, 4096), (3, 4096), (4096, 1 << 20)] {
            let (mut s, counters) = shim(input.clone(), step, false);
            assert_eq!(read_all(&mut s, chunk).await.unwrap(), want);
            let c = counters.snapshot();
            assert_eq!(c.decoded_bytes, (a.len() + b.len()) as u64);
            assert_eq!(c.compressed_wire_bytes, (wa.len() + wb.len()) as u64);
        }
    }

    #[tokio::test]
    async fn fragmented_compressed_message_comes_out_whole() {
        let text = br#"{"type":"members","members":["bench-1","bench-2"]}"#.repeat(40);
        let c = compress(&text);
        let (p1, p2) = c.split_at(c.len() / 2);
        let input = cat(&[
            AGREED,
            &frame(0x40 | 1, p1),  // text, RSV1, not final
            &frame(0x89, b"ping"), // a control frame in between passes at once
            &frame(0x80, p2),      // continuation, final
        ]);
        let want = cat(&[AGREED, &frame(0x89, b"ping"), &text_frame(&text)]);
        let (mut s, counters) = shim(input, 1, true);
        assert_eq!(read_all(&mut s, 4096).await.unwrap(), want);
        let n = counters.snapshot();
        assert_eq!((n.frames, n.compressed_frames), (3, 2));
        assert_eq!(n.decoded_bytes, text.len() as u64);
    }

    #[tokio::test]
    async fn a_bomb_beyond_the_cap_fails() {
        let bomb = vec![0u8; MAX_INFLATED + 1];
        let wire = compressed_text(&bomb);
        assert!(wire.len() < 64 << 10, "{} bytes", wire.len());
        let (mut s, _) = shim(cat(&[AGREED, &wire]), 1 << 16, false);
        let err = read_all(&mut s, 4096).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("over"), "{err}");
        // Exactly at the cap is fine.
        let at_cap = vec![0u8; MAX_INFLATED];
        let (mut s, counters) = shim(cat(&[AGREED, &compressed_text(&at_cap)]), 1 << 16, false);
        let out = read_all(&mut s, 1 << 20).await.unwrap();
        assert_eq!(out.len(), AGREED.len() + 10 + MAX_INFLATED);
        assert_eq!(counters.snapshot().decoded_bytes, MAX_INFLATED as u64);
        // A smaller cap, a compressed frame whose declared length alone exceeds it, and
        // garbage that is not DEFLATE.
        let counters = Arc::new(WireCounters::default());
        let input = cat(&[AGREED, &compressed_text(&vec![b'a'; 1001])]);
        let mut s = Inflate::with_limit(Trickle::new(input, 7, false), counters.clone(), 1000);
        assert!(read_all(&mut s, 64).await.is_err());
        let input = cat(&[AGREED, &frame(0xc1, &noise(2000))]);
        let mut s = Inflate::with_limit(Trickle::new(input, 4096, false), counters.clone(), 1000);
        assert!(read_all(&mut s, 4096).await.is_err());
        let input = cat(&[AGREED, &frame(0xc1, &[0xff; 40])]);
        let (mut s, _) = shim(input, 4096, false);
        assert!(read_all(&mut s, 4096).await.is_err());
    }

    #[test]
    fn inflates_many_messages_with_one_inflater() {
        // No context takeover: each message inflates on its own, with the per-thread inflater.
        for i in 0..50 {
            let text = format!("message {i} ").repeat(100 + i);
            let (out, start) = inflate_message(1, compress(text.as_bytes()), MAX_INFLATED).unwrap();
            assert_eq!(out[start..], text_frame(text.as_bytes())[..]);
        }
    }
}
