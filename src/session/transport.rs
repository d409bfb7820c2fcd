//! The WebSocket transport of a session, straight on the TCP socket (no tungstenite
//! stream, no split sink, no hyper `Upgraded` in between): the server's half of the
//! opening handshake ([`accept_key`]), the reader of client frames ([`Reader`]: headers
//! parsed by tungstenite's frame codec, unmasking, fragments, size limit, control
//! frames), and server frames encoded for the socket ([`Chunk`]: unmasked, a 2-, 4- or
//! 10-byte header in front of the shared payload, written with vectored writes).
//!
//! Memory: an idle connection holds no read buffer (one is taken when bytes arrive and
//! given back when they are consumed), so a large frame never leaves a large buffer
//! behind.

use std::io::{self, Cursor, IoSlice};

use bytes::{Buf, Bytes, BytesMut};

use super::deflate::{self, InflateError};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Server frame opcodes (first header byte, FIN set).
pub(super) const TEXT: u8 = 0x81;
/// A compressed text message (FIN, RSV1, text).
pub(super) const TEXT_DEFLATED: u8 = 0xC1;
pub(super) const CLOSE: u8 = 0x88;
pub(super) const PING: u8 = 0x89;
pub(super) const PONG: u8 = 0x8A;

/// How much a read asks the socket for at least (client frames are small JSON).
const READ_CHUNK: usize = 512;
/// Control frames carry at most this many payload bytes (RFC 6455, 5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub(crate) fn accept_key(key: &[u8]) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key)
}

/// A complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Incoming {
    Text(String),
    Binary,
    Ping(Bytes),
    Pong,
    /// The client's close frame, with its status code if it gave one.
    Close(Option<u16>),
}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadError {
    #[error("the client closed the connection")]
    Eof,
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("a frame or message over {0} bytes")]
    TooLarge(usize),
}

/// Reads client frames from the socket's read half.
pub(super) struct Reader {
    sock: OwnedReadHalf,
    /// Bytes read and not parsed yet; empty (no allocation) between frames.
    buf: BytesMut,
    /// A fragmented message being collected: its kind and the payload so far.
    partial: Option<(Kind, Vec<u8>)>,
    /// The largest frame and the largest message (after reassembly and inflation)
    /// accepted.
    max: usize,
    /// `permessage-deflate` was agreed: a message's first frame may have RSV1 set.
    inflate: bool,
}

/// What a data message is: text or binary, compressed (RSV1 on its first frame) or not.
#[derive(Debug, Clone, Copy)]
struct Kind {
    text: bool,
    compressed: bool,
}

impl Reader {
    /// `early` are bytes the HTTP server read past the upgrade request.
    /// `inflate`: `permessage-deflate` was agreed in the handshake.
    pub(super) fn new(sock: OwnedReadHalf, early: Bytes, max: usize, inflate: bool) -> Self {
        Reader {
            sock,
            buf: BytesMut::from(&early[..]),
            partial: None,
            max,
            inflate,
        }
    }

    /// The next message or control frame. Cancel-safe: bytes read stay in the buffer.
    pub(super) async fn next(&mut self) -> Result<Incoming, ReadError> {
        loop {
            if let Some(incoming) = self.parse()? {
                if self.buf.is_empty() {
                    // Give the buffer back: an idle connection holds none.
                    self.buf = BytesMut::new();
                }
                return Ok(incoming);
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes into the buffer (at least one, or an error).
    async fn fill(&mut self) -> Result<(), ReadError> {
        loop {
            self.sock.readable().await?;
            if self.buf.capacity() - self.buf.len() < READ_CHUNK {
                self.buf.reserve(READ_CHUNK);
            }
            match self.sock.try_read_buf(&mut self.buf) {
                Ok(0) => return Err(ReadError::Eof),
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Parses the buffered frames until one completes a message or is a control frame;
    /// `None` when more bytes are needed.
    fn parse(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let mut cursor = Cursor::new(&self.buf[..]);
            let parsed = FrameHeader::parse(&mut cursor)
                .map_err(|_| ReadError::Protocol("malformed frame header"))?;
            let Some((header, len)) = parsed else {
                return Ok(None);
            };
            let head = cursor.position() as usize;
            if len > self.max as u64 {
                return Err(ReadError::TooLarge(self.max));
            }
            let len = len as usize;
            if self.buf.len() < head + len {
                // Room for the rest of this frame (bounded by `max`), then read on.
                self.buf.reserve(head + len - self.buf.len());
                return Ok(None);
            }
            if header.rsv2 || header.rsv3 || (header.rsv1 && !self.inflate) {
                return Err(ReadError::Protocol(
                    "reserved bits set (no extension agreed)",
                ));
            }
            let Some(mask) = header.mask else {
                return Err(ReadError::Protocol("client frames must be masked"));
            };
            self.buf.advance(head);
            let mut payload = self.buf.split_to(len);
            unmask(&mut payload, mask);
            if let Some(incoming) =
                self.frame(header.is_final, header.rsv1, header.opcode, payload)?
            {
                return Ok(Some(incoming));
            }
        }
    }

    /// Applies one unmasked frame: a control frame or a completed message comes out.
    /// `rsv1` (compressed) is only allowed on a message's first frame.
    fn frame(
        &mut self,
        fin: bool,
        rsv1: bool,
        opcode: OpCode,
        payload: BytesMut,
    ) -> Result<Option<Incoming>, ReadError> {
        if rsv1 && !matches!(opcode, OpCode::Data(Data::Text | Data::Binary)) {
            return Err(ReadError::Protocol(
                "RSV1 set on a control or continuation frame",
            ));
        }
        match opcode {
            OpCode::Control(control) => {
                if !fin || payload.len() as u64 > MAX_CONTROL_PAYLOAD {
                    return Err(ReadError::Protocol(
                        "control frames must be final and at most 125 bytes",
                    ));
                }
                match control {
                    Control::Ping => Ok(Some(Incoming::Ping(payload.freeze()))),
                    Control::Pong => Ok(Some(Incoming::Pong)),
                    Control::Close => close_code(&payload).map(|c| Some(Incoming::Close(c))),
                    Control::Reserved(_) => Err(ReadError::Protocol("reserved opcode")),
                }
            }
            OpCode::Data(Data::Continue) => {
                let Some((_, collected)) = self.partial.as_mut() else {
                    return Err(ReadError::Protocol("continuation without a message"));
                };
                if collected.len() + payload.len() > self.max {
                    return Err(ReadError::TooLarge(self.max));
                }
                collected.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                let Some((kind, collected)) = self.partial.take() else {
                    return Ok(None);
                };
                message(kind, collected, self.max).map(Some)
            }
            OpCode::Data(data @ (Data::Text | Data::Binary)) => {
                if self.partial.is_some() {
                    return Err(ReadError::Protocol("a new message inside a fragmented one"));
                }
                let kind = Kind {
                    text: data == Data::Text,
                    compressed: rsv1,
                };
                if fin {
                    message(kind, payload.to_vec(), self.max).map(Some)
                } else {
                    self.partial = Some((kind, payload.to_vec()));
                    Ok(None)
                }
            }
            OpCode::Data(Data::Reserved(_)) => Err(ReadError::Protocol("reserved opcode")),
        }
    }
}

/// A complete data message, inflated (to at most `max` bytes) if it was compressed:
/// text must be UTF-8.
fn message(kind: Kind, payload: Vec<u8>, max: usize) -> Result<Incoming, ReadError> {
    if !kind.text {
        return Ok(Incoming::Binary);
    }
    let payload = if kind.compressed {
        deflate::inflate(&payload, max).map_err(|e| match e {
            InflateError::TooLarge => ReadError::TooLarge(max),
            InflateError::Corrupt => ReadError::Protocol("invalid compressed data"),
        })?
    } else {
        payload
    };
    String::from_utf8(payload)
        .map(Incoming::Text)
        .map_err(|_| ReadError::Protocol("text frame is not valid UTF-8"))
}

/// The status code of a close frame's payload (none, or 2 bytes and a UTF-8 reason).
fn close_code(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ReadError::Protocol("close frame with a 1-byte payload")),
        [a, b, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(ReadError::Protocol("close reason is not valid UTF-8"));
            }
            Ok(Some(u16::from_be_bytes([*a, *b])))
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// One server frame (or several, concatenated) on its way to the socket, with how much
/// of it was written already. A frame keeps its payload shared with every other
/// recipient; only its header is its own.
#[derive(Debug)]
pub(super) struct Chunk {
    head: [u8; 10],
    head_len: u8,
    body: Bytes,
    /// Bytes of `head` then `body` already written.
    done: usize,
}

impl Chunk {
    /// One unmasked server frame; `first` is the header's first byte (FIN + opcode).
    pub(super) fn frame(first: u8, payload: Bytes) -> Chunk {
        let mut head = [0u8; 10];
        head[0] = first;
        let len = payload.len();
        let head_len = if len < 126 {
            head[1] = len as u8;
            2
        } else if let Ok(len) = u16::try_from(len) {
            head[1] = 126;
            head[2..4].copy_from_slice(&len.to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Chunk {
            head,
            head_len,
            body: payload,
            done: 0,
        }
    }

    /// Bytes already encoded as frames (several frames in one write).
    pub(super) fn encoded(bytes: Vec<u8>) -> Chunk {
        Chunk {
            head: [0; 10],
            head_len: 0,
            body: Bytes::from(bytes),
            done: 0,
        }
    }

    /// Appends this chunk's unwritten bytes to `out`.
    pub(super) fn append_to(&self, out: &mut Vec<u8>) {
        let (head, body) = self.rest();
        out.extend_from_slice(head);
        out.extend_from_slice(body);
    }

    /// The unwritten part: of the header, of the body.
    fn rest(&self) -> (&[u8], &[u8]) {
        let head_len = usize::from(self.head_len);
        if self.done < head_len {
            (&self.head[self.done..head_len], &self.body[..])
        } else {
            (&[], &self.body[self.done - head_len..])
        }
    }

    fn len(&self) -> usize {
        usize::from(self.head_len) + self.body.len()
    }

    /// Whether nothing of it was written yet (so something may still go before it).
    pub(super) fn untouched(&self) -> bool {
        self.done == 0
    }

    /// Writes as much as the socket takes now: `Ok(true)` when all of it is written,
    /// `Ok(false)` when the socket would block.
    ///
    /// A small frame is copied behind its header and written with one plain `write`
    /// (`sendto`), which costs the kernel less than a vectored write of two slices.
    pub(super) fn write_to(&mut self, sock: &OwnedWriteHalf) -> io::Result<bool> {
        /// Frames up to this size (header included) are copied into one slice.
        const SMALL: usize = 1024;
        let (head, body) = self.rest();
        let n = head.len() + body.len();
        if n > SMALL {
            write_chunks(sock, std::slice::from_mut(self))?;
            return Ok(self.done == self.len());
        }
        let mut buf = [0u8; SMALL];
        buf[..head.len()].copy_from_slice(head);
        buf[head.len()..n].copy_from_slice(body);
        // Straight to the socket, not through tokio's `try_write`: its readiness check
        // reads a per-socket atomic that is a cache miss for nearly every delivery of a
        // fan-out (about 3% of a gateway's CPU). A send that would block just reports it;
        // the flush task then waits through tokio, whose own write clears the readiness.
        match socket2::SockRef::from(sock.as_ref()).send(&buf[..n]) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                self.done += written;
                Ok(self.done == self.len())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Writes as many of `chunks`, in order, as the socket takes now (vectored writes),
/// recording progress in each; returns how many were written completely.
pub(super) fn write_chunks(sock: &OwnedWriteHalf, chunks: &mut [Chunk]) -> io::Result<usize> {
    /// Chunks per system call (two slices each).
    const MAX_CHUNKS: usize = 32;
    let total = chunks.len();
    let mut complete = 0;
    while complete < total {
        let batch = &mut chunks[complete..total.min(complete + MAX_CHUNKS)];
        let mut slices: [IoSlice<'_>; 2 * MAX_CHUNKS] = [IoSlice::new(&[]); 2 * MAX_CHUNKS];
        let mut n = 0;
        for chunk in batch.iter() {
            let (head, body) = chunk.rest();
            for part in [head, body] {
                if !part.is_empty() {
                    slices[n] = IoSlice::new(part);
                    n += 1;
                }
            }
        }
        let mut written = match sock.try_write_vectored(&slices[..n]) {
            Ok(written) => written,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(complete),
            Err(e) => return Err(e),
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        for chunk in batch.iter_mut() {
            let left = chunk.len() - chunk.done;
            let step = left.min(written);
            chunk.done += step;
            written -= step;
            if chunk.done < chunk.len() {
                return Ok(complete);
            }
            complete += 1;
        }
    }
    Ok(complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_form() {
        let lens = [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)];
        for (len, head_len) in lens {
            let chunk = Chunk::frame(TEXT, Bytes::from(vec![b'x'; len]));
            let mut out = Vec::new();
            chunk.append_to(&mut out);
            assert_eq!(out.len(), len + head_len, "payload of {len} bytes");
            let mut cursor = Cursor::new(&out[..]);
            let (header, parsed) = FrameHeader::parse(&mut cursor)
                .expect("valid header")
                .expect("complete header");
            assert_eq!(parsed, len as u64);
            assert!(header.is_final && header.mask.is_none());
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
        }
    }

    #[test]
    fn close_payloads_are_checked() {
        assert_eq!(close_code(&[]).ok(), Some(None));
        assert!(close_code(&[3]).is_err());
        assert_eq!(close_code(&[3, 232, b'o', b'k']).ok(), Some(Some(1000)));
        assert!(close_code(&[3, 232, 0xff]).is_err());
    }
}
