//! WebSocket compression, `permessage-deflate` (RFC 7692) without context takeover in
//! either direction: the negotiation of the opening handshake ([`negotiate`]), the
//! compression of one server message ([`compress`]) and the inflation of one client
//! message ([`inflate`], bounded).
//!
//! No context takeover means every message is compressed on its own, so a connection
//! keeps no compressor or decompressor state: one of each per worker thread is reset
//! and reused. A large room's frame is compressed once for all of its recipients (see
//! `RoomFrame::deflated`), and frames under `server.compression_min_bytes` go out as
//! they are (the extension lets the sender choose per message).

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension as the server agrees to it: both sides reset their context after every
/// message (the server may add `client_no_context_takeover` on its own, RFC 7692 7.1.1.2).
pub(crate) const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The tail every sync-flushed DEFLATE block ends with; removed by the sender and put
/// back by the receiver (RFC 7692 7.2.1, 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    static COMPRESS: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
    static DECOMPRESS: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Whether one of the client's `Sec-WebSocket-Extensions` offers is a
/// `permessage-deflate` the server can accept: any offer whose parameters are known and
/// do not limit the server's window below 15 bits (the compressor here always uses
/// 15). Malformed offers are skipped, never an error.
pub(crate) fn negotiate<'a>(headers: impl IntoIterator<Item = &'a [u8]>) -> bool {
    headers.into_iter().any(|value| {
        std::str::from_utf8(value)
            .is_ok_and(|value| value.split(',').any(|offer| acceptable(offer.trim())))
    })
}

/// One offer: `permessage-deflate` followed by `; param[=value]` items.
fn acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate"))
    {
        return false;
    }
    let mut seen: Vec<String> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        // Each parameter at most once (RFC 7692 7.1).
        if seen.contains(&name) {
            return false;
        }
        let ok = match name.as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            // The client's own window: whatever it uses, our inflater takes 15 bits.
            "client_max_window_bits" => value.is_none_or(window_bits_valid),
            // A limit on our window: only 15 (no limit) is honoured.
            "server_max_window_bits" => value == Some("15"),
            _ => false,
        };
        if !ok {
            return false;
        }
        seen.push(name);
    }
    true
}

fn window_bits_valid(value: &str) -> bool {
    value
        .parse::<u8>()
        .is_ok_and(|bits| (8..=15).contains(&bits))
}

/// The payload of a compressed message (to be sent with RSV1 set), or `None` when
/// compressing does not make it smaller.
pub(crate) fn compress(payload: &[u8]) -> Option<Bytes> {
    COMPRESS.with(|cell| {
        let mut compressor = cell.borrow_mut();
        compressor.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        let mut input = payload;
        loop {
            let before_in = compressor.total_in();
            let status = compressor
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .ok()?;
            let consumed = (compressor.total_in() - before_in) as usize;
            input = &input[consumed..];
            if out.len() >= payload.len() {
                return None;
            }
            // Done when all input is in and the flush left spare room in the output.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if status == Status::StreamEnd {
                break;
            }
            out.reserve(256);
        }
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        Some(Bytes::from(out))
    })
}

/// Why a compressed client message was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// Not valid DEFLATE data.
    Corrupt,
    /// Inflates to more than the limit.
    TooLarge,
}

/// Inflates one compressed client message, refusing (without inflating further) one that
/// would grow past `max` bytes.
pub(crate) fn inflate(payload: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    DECOMPRESS.with(|cell| {
        let mut decompressor = cell.borrow_mut();
        decompressor.reset(false);
        let mut out = Vec::with_capacity((payload.len() * 4).min(max) + 16);
        for (input, last) in [(payload, false), (&TAIL[..], true)] {
            let mut input = input;
            loop {
                let before_in = decompressor.total_in();
                let before_out = out.len();
                let status = decompressor
                    .decompress_vec(input, &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                if out.len() > max {
                    return Err(InflateError::TooLarge);
                }
                let consumed = (decompressor.total_in() - before_in) as usize;
                input = &input[consumed..];
                if status == Status::StreamEnd {
                    return Ok(out);
                }
                if input.is_empty() && out.len() < out.capacity() {
                    break;
                }
                if consumed == 0 && out.len() == before_out && out.len() < out.capacity() {
                    // No progress with room to spare: the data is cut short.
                    if last {
                        break;
                    }
                    return Err(InflateError::Corrupt);
                }
                // Out of room: grow, at most to one byte past the limit.
                out.reserve((out.capacity()).min(max + 1 - out.len()).max(1));
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(value: &str) -> bool {
        negotiate([value.as_bytes()])
    }

    #[test]
    fn offers_browsers_and_libraries_make_are_accepted() {
        // Chromium, Firefox, Node's ws, Python's websockets.
        assert!(offer("permessage-deflate; client_max_window_bits"));
        assert!(offer("permessage-deflate"));
        assert!(offer(
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover"
        ));
        assert!(offer("permessage-deflate; client_max_window_bits=15"));
        assert!(offer("permessage-deflate; server_max_window_bits=15"));
        assert!(offer("x-webkit-deflate-frame, permessage-deflate"));
        // A first offer we cannot honour, then a fallback we can.
        assert!(offer(
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ));
        assert!(negotiate([&b"foo"[..], &b"permessage-deflate"[..]]));
    }

    #[test]
    fn offers_the_server_cannot_honour_are_declined() {
        assert!(!offer(""));
        assert!(!offer("x-webkit-deflate-frame"));
        assert!(!offer("permessage-deflate; server_max_window_bits=10"));
        assert!(!offer("permessage-deflate; server_max_window_bits"));
        assert!(!offer("permessage-deflate; client_max_window_bits=7"));
        assert!(!offer("permessage-deflate; client_max_window_bits=abc"));
        assert!(!offer("permessage-deflate; unknown_param"));
        assert!(!offer(
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover"
        ));
        assert!(!offer("permessage-deflate; server_no_context_takeover=1"));
        assert!(!negotiate([&[0xff, 0xfe][..]]));
    }

    #[test]
    fn a_compressed_message_inflates_to_itself() {
        let text: String = (0..200)
            .map(|i| format!("{{\"id\":\"u{i}\",\"name\":\"member {i}\"}},"))
            .collect();
        let packed = compress(text.as_bytes()).expect("repetitive JSON compresses");
        assert!(
            packed.len() * 3 < text.len(),
            "{} of {}",
            packed.len(),
            text.len()
        );
        assert!(!packed.ends_with(&TAIL));
        assert_eq!(inflate(&packed, 1 << 20), Ok(text.clone().into_bytes()));
        // Twice in a row on one thread: nothing carries over between messages.
        let again = compress(text.as_bytes()).expect("compresses");
        assert_eq!(again, packed);
    }

    #[test]
    fn incompressible_payloads_are_left_alone() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..600)
            .map(|_| {
                // xorshift64: bytes with nothing for DEFLATE to find.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        assert_eq!(compress(&noise), None);
    }

    #[test]
    fn inflation_stops_at_the_limit() {
        let zeros = vec![b'a'; 1 << 20];
        let packed = compress(&zeros).expect("compresses");
        assert!(packed.len() < 8 << 10);
        assert_eq!(inflate(&packed, 4096), Err(InflateError::TooLarge));
        assert_eq!(inflate(&packed, 1 << 20).map(|v| v.len()), Ok(1 << 20));
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        assert_eq!(inflate(&[0xff; 64], 4096), Err(InflateError::Corrupt));
        // Every prefix of a valid message: an error or a shorter text, never a panic.
        let packed = compress(&[b'x'; 3000]).expect("compresses");
        for cut in 0..packed.len() {
            let _ = inflate(&packed[..cut], 4096);
        }
    }
}
