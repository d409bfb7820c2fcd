//! Client frames of the hostile run: the RFC 6455 encoder (masked, or deliberately not,
//! and with a declared length that may differ from the bytes that follow) and one
//! generator per [`Kind`] of hostile input. Valid frames come from the examples of
//! `docs/protocol.md`; mutated ones start from those and change values, types, fields or
//! characters.
//!
//! Each generator returns a [`Step`]: one hostile input (a whole frame, a fragmented
//! message with the pings between its fragments, or a short sequence of frames that
//! breaks a rule), as the wire chunks to write (one frame each), and whether the gateway is
//! expected to end the connection after it (a protocol violation, an oversized frame, a
//! close frame). The mix is by step: a fragmented message counts once in it, however many
//! frames it takes on the wire.

use std::io::Write;

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde_json::{Map, Value, json};

pub(crate) const OP_CONT: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;
const RSV1: u8 = 0x40;

/// The gateway's default `limits.max_frame_bytes` (oversized frames go past it).
pub(crate) const DEFAULT_MAX_FRAME: usize = 16 * 1024;

/// What a frame (or a short sequence of frames) tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// A protocol frame as `docs/protocol.md` shows it (join, send, typing, ...).
    Valid,
    /// A protocol frame with values, types, fields or characters changed.
    Mutated,
    /// Random JSON, and pathological JSON (deep nesting, huge numbers, lone surrogates).
    RandomJson,
    /// A text frame that is not JSON: random bytes made valid UTF-8 (invalid sequences
    /// replaced by U+FFFD), random characters from all of Unicode (controls, astral,
    /// noncharacters), or a soup of JSON tokens.
    RandomText,
    /// A binary frame of random bytes.
    Binary,
    /// A message split over continuation frames (legal), sometimes with a ping between
    /// fragments or a UTF-8 character split across two. One step, several wire frames.
    Fragmented,
    /// Ping and unsolicited pong with payloads up to 125 bytes (legal).
    Control,
    /// Continuation without a start, a new message inside a fragmented one, a fragmented
    /// control frame.
    BadFragments,
    /// A frame (or a message of fragments) over `limits.max_frame_bytes`, or a header
    /// declaring a huge length (up to 2^64 - 1) with few bytes behind it.
    Oversized,
    /// Close frames with odd payloads: one byte, reserved and out-of-range codes, invalid
    /// UTF-8 or over-long reasons.
    CloseOdd,
    /// Text frames that are not UTF-8 (overlong forms, surrogates, truncated sequences),
    /// whole or fragmented.
    InvalidUtf8,
    /// RSV2/RSV3 set, reserved opcodes, a ping over 125 bytes.
    Reserved,
    /// A client frame without a mask.
    Unmasked,
    /// RSV1 (permessage-deflate): garbage that does not inflate, a deflate bomb that
    /// inflates far past the size limit, or RSV1 on a connection without the extension.
    Deflate,
    /// A frame cut short: a header and part of its payload, then the connection ends.
    Partial,
}

impl Kind {
    pub(crate) const NON_FATAL: [Kind; 7] = [
        Kind::Valid,
        Kind::Mutated,
        Kind::RandomJson,
        Kind::RandomText,
        Kind::Binary,
        Kind::Fragmented,
        Kind::Control,
    ];
    /// Weights of [`Kind::NON_FATAL`] (percent of steps): random and mutated text
    /// (mutated, random JSON, random text) two thirds, the legal frames of other shapes
    /// (binary, fragmented messages, pings and pongs) a fifth, valid frames the rest, so
    /// the gateway also gets past the parser into joins, sends and rate limits.
    const NON_FATAL_WEIGHTS: [u32; 7] = [12, 35, 19, 12, 8, 6, 8];
    pub(crate) const FATAL: [Kind; 8] = [
        Kind::BadFragments,
        Kind::Oversized,
        Kind::CloseOdd,
        Kind::InvalidUtf8,
        Kind::Reserved,
        Kind::Unmasked,
        Kind::Deflate,
        Kind::Partial,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::Mutated => "mutated",
            Kind::RandomJson => "random_json",
            Kind::RandomText => "random_text",
            Kind::Binary => "binary",
            Kind::Fragmented => "fragmented",
            Kind::Control => "control",
            Kind::BadFragments => "bad_fragments",
            Kind::Oversized => "oversized",
            Kind::CloseOdd => "close_odd",
            Kind::InvalidUtf8 => "invalid_utf8",
            Kind::Reserved => "reserved_bits_opcodes",
            Kind::Unmasked => "unmasked",
            Kind::Deflate => "deflate",
            Kind::Partial => "partial",
        }
    }

    /// A non-fatal kind, by weight.
    pub(crate) fn pick_non_fatal(rng: &mut StdRng) -> Kind {
        let total: u32 = Self::NON_FATAL_WEIGHTS.iter().sum();
        let mut x = rng.random_range(0..total);
        for (k, w) in Self::NON_FATAL.iter().zip(Self::NON_FATAL_WEIGHTS) {
            if x < w {
                return *k;
            }
            x -= w;
        }
        Kind::Valid
    }
}

/// One frame as it goes on the wire.
pub(crate) struct Frame {
    pub fin: bool,
    /// RSV bits, already in place (0x40, 0x20, 0x10).
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
    /// The length the header declares when it is not the payload's (oversized, partial).
    pub declared_len: Option<u64>,
}

impl Frame {
    pub(crate) fn new(opcode: u8, payload: Vec<u8>) -> Self {
        Frame {
            fin: true,
            rsv: 0,
            opcode,
            masked: true,
            payload,
            declared_len: None,
        }
    }

    fn fin(mut self, fin: bool) -> Self {
        self.fin = fin;
        self
    }

    pub(crate) fn encode(&self, rng: &mut StdRng) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push(if self.fin { 0x80 } else { 0 } | (self.rsv & 0x70) | (self.opcode & 0x0f));
        let len = self.declared_len.unwrap_or(self.payload.len() as u64);
        let mask_bit = if self.masked { 0x80 } else { 0 };
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if let Ok(short) = u16::try_from(len) {
            out.push(mask_bit | 126);
            out.extend_from_slice(&short.to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        if self.masked {
            let key: [u8; 4] = rng.random();
            out.extend_from_slice(&key);
            out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(&self.payload);
        }
        out
    }
}

/// What a generator produced: wire chunks (one frame each) and whether the gateway is
/// expected to end the connection after them.
pub(crate) struct Step {
    pub kind: Kind,
    pub chunks: Vec<Vec<u8>>,
    pub fatal: bool,
}

/// Everything the generators need besides randomness.
pub(crate) struct Ctx {
    /// The connection negotiated permessage-deflate.
    pub deflate: bool,
    /// A raw DEFLATE stream inflating to many MiB of zeros (built once).
    pub bomb: std::sync::Arc<Vec<u8>>,
    pub max_frame: usize,
}

/// Builds the deflate bomb: `inflated` zero bytes, raw DEFLATE (as permessage-deflate
/// sends it, without the final empty block's 00 00 ff ff).
pub(crate) fn deflate_bomb(inflated: usize) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 64 * 1024];
    let mut left = inflated;
    while left > 0 {
        let n = left.min(zeros.len());
        // Writing into a Vec cannot fail.
        let _ = enc.write_all(&zeros[..n]);
        left -= n;
    }
    enc.finish().unwrap_or_default()
}

fn compress(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = enc.write_all(data);
    let mut out = enc.finish().unwrap_or_default();
    if out.ends_with(&[0, 0, 0xff, 0xff]) {
        out.truncate(out.len() - 4);
    }
    out
}

/// Generates one step of the given kind.
pub(crate) fn generate(kind: Kind, ctx: &Ctx, rng: &mut StdRng) -> Step {
    let frames: Vec<Frame>;
    let mut fatal = true;
    match kind {
        Kind::Valid => {
            fatal = false;
            frames = vec![Frame::new(
                OP_TEXT,
                valid_frame(rng).to_string().into_bytes(),
            )];
        }
        Kind::Mutated => {
            fatal = false;
            frames = vec![Frame::new(OP_TEXT, mutated(rng))];
        }
        Kind::RandomJson => {
            fatal = false;
            frames = vec![Frame::new(OP_TEXT, random_json_text(rng))];
        }
        Kind::RandomText => {
            fatal = false;
            frames = vec![Frame::new(OP_TEXT, random_text(rng))];
        }
        Kind::Binary => {
            fatal = false;
            let n = rng.random_range(0..=2048);
            frames = vec![Frame::new(OP_BINARY, random_bytes(rng, n))];
        }
        Kind::Fragmented => {
            fatal = false;
            frames = fragmented(rng);
        }
        Kind::Control => {
            fatal = false;
            let n = rng.random_range(0..=125);
            let op = if rng.random_bool(0.7) {
                OP_PING
            } else {
                OP_PONG
            };
            frames = vec![Frame::new(op, random_bytes(rng, n))];
        }
        Kind::BadFragments => frames = bad_fragments(rng),
        Kind::Oversized => frames = oversized(ctx, rng),
        Kind::CloseOdd => frames = vec![Frame::new(OP_CLOSE, odd_close_payload(rng))],
        Kind::InvalidUtf8 => frames = invalid_utf8(rng),
        Kind::Reserved => frames = vec![reserved(rng)],
        Kind::Unmasked => {
            let mut f = Frame::new(OP_TEXT, valid_frame(rng).to_string().into_bytes());
            f.masked = false;
            frames = vec![f];
        }
        Kind::Deflate => {
            let (f, is_fatal) = deflate_frame(ctx, rng);
            fatal = is_fatal;
            frames = vec![f];
        }
        Kind::Partial => {
            let mut f = Frame::new(OP_TEXT, valid_frame(rng).to_string().into_bytes());
            let full = f.encode(rng);
            // Cut anywhere from after the first byte to one byte short of the end.
            let cut = rng.random_range(1..full.len().max(2));
            f.payload.clear();
            return Step {
                kind,
                chunks: vec![full[..cut].to_vec()],
                fatal: true,
            };
        }
    }
    Step {
        kind,
        chunks: frames.iter().map(|f| f.encode(rng)).collect(),
        fatal,
    }
}

fn random_bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

fn random_bytes_in(
    rng: &mut StdRng,
    len: impl rand::distr::uniform::SampleRange<usize>,
) -> Vec<u8> {
    let n = rng.random_range(len);
    random_bytes(rng, n)
}

fn room(rng: &mut StdRng) -> String {
    format!("hostile-{}", rng.random_range(0..16))
}

/// One of the client frames of `docs/protocol.md`, with plausible values.
fn valid_frame(rng: &mut StdRng) -> Value {
    let room = room(rng);
    let r = rng.random_range(0..100);
    match r {
        0..=29 => {
            let mut v = json!({"type": "join", "room": room, "name": format!("hostile{}", rng.random_range(0..1000))});
            match rng.random_range(0..4) {
                0 => {
                    v["since"] = json!(format!(
                        "{}-{}",
                        rng.random_range(0..2_000_000_000_000u64),
                        rng.random_range(0..5)
                    ))
                }
                1 => v["history"] = json!(rng.random_range(0..300)),
                _ => {}
            }
            v
        }
        30..=54 => {
            json!({"type": "send", "room": room, "text": "hello", "ref": format!("c{}", rng.random_range(0..1000)), "idem": format!("k-{:x}", rng.random::<u32>())})
        }
        55..=64 => json!({"type": "typing", "room": room}),
        65..=72 => json!({"type": "members", "room": room, "limit": rng.random_range(1..=1000)}),
        73..=82 => json!({"type": "leave", "room": room}),
        83..=92 => json!({"type": "ping", "ref": "p1"}),
        93..=96 => json!({"type": "auth", "token": "eyJhbGciOiJIUzI1NiJ9.e30.c2ln"}),
        _ => json!({"type": "refresh", "token": "not.a.jwt"}),
    }
}

fn random_string(rng: &mut StdRng, max: usize) -> String {
    let n = rng.random_range(0..=max);
    let pool: &[char] = &[
        'a', 'Z', '0', ' ', '-', '_', ':', '.', '"', '\\', '/', '\n', '\t', '\u{0}', '\u{7f}', 'é',
        'ß', '中', '😀', '\u{200b}', '\u{feff}', '\u{fffd}', '{', '}', '[', ']', ',',
    ];
    (0..n).map(|_| *pool.choose(rng).unwrap_or(&'a')).collect()
}

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    let leaf = depth == 0 || rng.random_bool(0.4);
    match rng.random_range(0..if leaf { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e300),
        4 => Value::String(random_string(rng, 40)),
        5 => json!(rng.random_range(-5..300)),
        6 => Value::Array(
            (0..rng.random_range(0..6))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.random_range(0..6) {
                let key = if rng.random_bool(0.5) {
                    [
                        "type", "room", "name", "text", "ref", "since", "history", "limit",
                        "after", "idem", "token",
                    ]
                    .choose(rng)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
                } else {
                    random_string(rng, 12)
                };
                m.insert(key, random_value(rng, depth - 1));
            }
            Value::Object(m)
        }
    }
}

/// A protocol frame changed at the value level (serde) or the character level (text).
fn mutated(rng: &mut StdRng) -> Vec<u8> {
    let mut v = valid_frame(rng);
    let fields: Vec<String> = v
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let field = fields
        .choose(rng)
        .cloned()
        .unwrap_or_else(|| "type".to_string());
    let text_level = rng.random_bool(0.35);
    if !text_level {
        for _ in 0..rng.random_range(1..=3) {
            // Indexing a non-object by key panics: the wrapping below comes last.
            if !v.is_object() {
                break;
            }
            match rng.random_range(0..12) {
                0 => v[&field] = random_value(rng, 2),
                1 => {
                    if let Some(m) = v.as_object_mut() {
                        m.remove(&field);
                    }
                }
                2 => v[random_string(rng, 10)] = random_value(rng, 2),
                3 => v[&field] = json!("x".repeat(rng.random_range(60..20_000))),
                4 => {
                    v["type"] = json!(
                        [
                            "JOIN",
                            "",
                            "send ",
                            "joinx",
                            "ping\u{0}",
                            "welcome",
                            "ack",
                            "error"
                        ]
                        .choose(rng)
                        .copied()
                        .unwrap_or("")
                    )
                }
                5 => {
                    v["room"] = json!(
                        [
                            "",
                            "a b",
                            "x".repeat(65).as_str(),
                            "général",
                            "../../etc",
                            "room\n",
                            "😀"
                        ]
                        .choose(rng)
                        .copied()
                        .unwrap_or("")
                    )
                }
                6 => {
                    v["name"] = json!(
                        [
                            "",
                            "   ",
                            "n".repeat(33).as_str(),
                            "\u{1}bell",
                            "\u{202e}rtl",
                            "😀😀😀"
                        ]
                        .choose(rng)
                        .copied()
                        .unwrap_or("")
                    )
                }
                7 => {
                    v["since"] = json!(
                        [
                            "abc",
                            "1-",
                            "-1",
                            "99999999999999999999-0",
                            "0-0",
                            "1-99999999999999999999",
                            ""
                        ]
                        .choose(rng)
                        .copied()
                        .unwrap_or("")
                    )
                }
                8 => {
                    v["history"] = json!(
                        [
                            json!(-1),
                            json!(1e10),
                            json!(0.5),
                            json!("5"),
                            json!(u64::MAX)
                        ]
                        .choose(rng)
                        .cloned()
                        .unwrap_or(Value::Null)
                    )
                }
                9 => {
                    v["limit"] = json!(
                        [json!(0), json!(1001), json!(-1), json!(1e10), json!("100")]
                            .choose(rng)
                            .cloned()
                            .unwrap_or(Value::Null)
                    )
                }
                10 => {
                    v["ref"] = json!(
                        ["r".repeat(65), String::new(), "\u{0}".to_string()]
                            .choose(rng)
                            .cloned()
                            .unwrap_or_default()
                    )
                }
                _ => v = Value::Array(vec![v.clone()]),
            }
        }
        return v.to_string().into_bytes();
    }
    // Character level: stays valid UTF-8 (a char is replaced by chars).
    let mut chars: Vec<char> = v.to_string().chars().collect();
    for _ in 0..rng.random_range(1..=4) {
        if chars.is_empty() {
            break;
        }
        let at = rng.random_range(0..chars.len());
        match rng.random_range(0..5) {
            0 => chars.truncate(at),
            1 => chars[at] = random_string(rng, 1).chars().next().unwrap_or('"'),
            2 => {
                let ins: Vec<char> = random_string(rng, 8).chars().collect();
                chars.splice(at..at, ins);
            }
            3 => {
                let end = (at + rng.random_range(1..20)).min(chars.len());
                let dup: Vec<char> = chars[at..end].to_vec();
                chars.splice(at..at, dup);
            }
            _ => {
                chars.remove(at);
            }
        }
    }
    chars.into_iter().collect::<String>().into_bytes()
}

fn random_json_text(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..14) {
        0 => {
            let n = rng.random_range(100..5000);
            format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()
        }
        1 => {
            let n = rng.random_range(100..2000);
            format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n)).into_bytes()
        }
        2 => b"{\"type\":\"send\",\"room\":\"r\",\"text\":1e999999}".to_vec(),
        3 => b"{\"type\":\"join\",\"room\":\"r\",\"name\":\"\\ud800\"}".to_vec(),
        4 => b"\xef\xbb\xbf{\"type\":\"ping\"}".to_vec(),
        5 => b"{\"type\":\"ping\",\"type\":\"join\",\"type\":\"leave\"}".to_vec(),
        6 => Vec::new(),
        7 => b"   \n\t ".to_vec(),
        8 => [
            "null",
            "true",
            "0",
            "\"\"",
            "[]",
            "{}",
            "-0",
            "[1,]",
            "{\"type\":}",
        ]
        .choose(rng)
        .map(|s| s.as_bytes().to_vec())
        .unwrap_or_default(),
        9 => format!(
            "{{\"type\":\"send\",\"room\":\"{}\",\"text\":\"{}\"}}",
            room(rng),
            "x".repeat(rng.random_range(1000..16_000))
        )
        .into_bytes(),
        _ => random_value(rng, 5).to_string().into_bytes(),
    }
}

/// Text that is not JSON (but is UTF-8, so the gateway must read it as a frame and refuse
/// it, not end the connection).
fn random_text(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..4) {
        // Random bytes as text: invalid sequences become U+FFFD.
        0 | 1 => {
            let bytes = random_bytes_in(rng, 0..=2048);
            String::from_utf8_lossy(&bytes).into_owned().into_bytes()
        }
        // Characters from anywhere in Unicode (surrogates are not chars: skipped).
        2 => {
            let n = rng.random_range(0..=512);
            (0..n)
                .filter_map(|_| char::from_u32(rng.random_range(0..=0x10_ffff)))
                .collect::<String>()
                .into_bytes()
        }
        // A soup of JSON tokens and protocol words.
        _ => {
            let tokens = [
                "{", "}", "[", "]", ":", ",", "\"", "\\", "type", "join", "send", "room", "null",
                "true", "1e9", "-", " ", "\n", "\\u0000", "\u{0}", "😀",
            ];
            let n = rng.random_range(0..=200);
            (0..n)
                .map(|_| *tokens.choose(rng).unwrap_or(&"{"))
                .collect::<String>()
                .into_bytes()
        }
    }
}

/// Splits `data` into `k` non-empty pieces (k at most data.len()).
fn split(data: &[u8], k: usize, rng: &mut StdRng) -> Vec<Vec<u8>> {
    if data.len() < 2 || k < 2 {
        return vec![data.to_vec()];
    }
    let k = k.min(data.len());
    let mut cuts: Vec<usize> = (0..k - 1)
        .map(|_| rng.random_range(1..data.len()))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in cuts {
        out.push(data[prev..c].to_vec());
        prev = c;
    }
    out.push(data[prev..].to_vec());
    out
}

/// A legal fragmented message: text (maybe with a multi-byte character split between two
/// fragments) or binary, with pings between fragments now and then.
fn fragmented(rng: &mut StdRng) -> Vec<Frame> {
    let (op, data) = match rng.random_range(0..4) {
        0 => (OP_BINARY, random_bytes(rng, 300)),
        1 => (
            OP_TEXT,
            format!(
                "{{\"type\":\"send\",\"room\":\"{}\",\"text\":\"é中😀é中😀\"}}",
                room(rng)
            )
            .into_bytes(),
        ),
        2 => (OP_TEXT, mutated(rng)),
        _ => (OP_TEXT, valid_frame(rng).to_string().into_bytes()),
    };
    // Many tiny fragments now and then (at most 32): usually 2 to 8, so a fragmented
    // message is about 6 wire frames.
    let k = if rng.random_bool(0.05) {
        data.len().min(32)
    } else {
        rng.random_range(2..=8)
    };
    let pieces = split(&data, k, rng);
    let last = pieces.len() - 1;
    let mut frames = Vec::new();
    for (i, p) in pieces.into_iter().enumerate() {
        let opcode = if i == 0 { op } else { OP_CONT };
        frames.push(Frame::new(opcode, p).fin(i == last));
        if i != last && rng.random_bool(0.15) {
            frames.push(Frame::new(OP_PING, b"mid".to_vec()));
        }
    }
    frames
}

fn bad_fragments(rng: &mut StdRng) -> Vec<Frame> {
    let data = valid_frame(rng).to_string().into_bytes();
    let half = data.len() / 2;
    match rng.random_range(0..4) {
        // A continuation with nothing to continue.
        0 => vec![Frame::new(OP_CONT, data)],
        // A new text message while one is still open.
        1 => vec![
            Frame::new(OP_TEXT, data[..half].to_vec()).fin(false),
            Frame::new(OP_TEXT, data[half..].to_vec()),
        ],
        // A fragmented control frame.
        2 => vec![
            Frame::new(OP_PING, b"frag".to_vec()).fin(false),
            Frame::new(OP_CONT, b"ment".to_vec()),
        ],
        // A binary start continued as text, then a stray final continuation.
        _ => vec![
            Frame::new(OP_BINARY, data[..half].to_vec()).fin(false),
            Frame::new(OP_CONT, data[half..].to_vec()),
            Frame::new(OP_CONT, b"extra".to_vec()),
        ],
    }
}

fn oversized(ctx: &Ctx, rng: &mut StdRng) -> Vec<Frame> {
    let max = ctx.max_frame;
    match rng.random_range(0..4) {
        // A whole frame just over the limit.
        0 => {
            let n = rng.random_range(max + 1..=max + 4096);
            let mut text =
                format!("{{\"type\":\"send\",\"room\":\"{}\",\"text\":\"", room(rng)).into_bytes();
            text.resize(n - 2, b'x');
            text.extend_from_slice(b"\"}");
            vec![Frame::new(OP_TEXT, text)]
        }
        // A header declaring a huge length, with a few bytes behind it.
        1 => {
            let declared = *[max as u64 + 1, 1 << 20, 1 << 32, i64::MAX as u64, u64::MAX]
                .choose(rng)
                .unwrap_or(&(1 << 20));
            let mut f = Frame::new(
                if rng.random_bool(0.5) {
                    OP_TEXT
                } else {
                    OP_BINARY
                },
                random_bytes_in(rng, 0..1024),
            );
            f.declared_len = Some(declared);
            vec![f]
        }
        // A message of fragments each under the limit, together over it.
        2 => {
            let piece = max / 4 + 1;
            let mut frames: Vec<Frame> = (0..5)
                .map(|i| {
                    Frame::new(if i == 0 { OP_TEXT } else { OP_CONT }, vec![b'a'; piece]).fin(false)
                })
                .collect();
            if let Some(last) = frames.last_mut() {
                last.fin = true;
            }
            frames
        }
        // A binary frame just over the limit (binary frames are refused, but the size
        // limit comes first).
        _ => vec![Frame::new(OP_BINARY, random_bytes(rng, max + 1))],
    }
}

fn odd_close_payload(rng: &mut StdRng) -> Vec<u8> {
    let code: u16 = *[
        0u16, 1, 999, 1000, 1001, 1004, 1005, 1006, 1012, 1015, 1016, 2999, 3000, 4999, 5000, 65535,
    ]
    .choose(rng)
    .unwrap_or(&0);
    let mut p = code.to_be_bytes().to_vec();
    match rng.random_range(0..6) {
        0 => vec![rng.random()],
        1 => Vec::new(),
        2 => {
            p.extend_from_slice(b"\xff\xfe bad utf-8 \xc0\xaf");
            p
        }
        3 => {
            p.extend(std::iter::repeat_n(b'r', rng.random_range(100..=123)));
            p
        }
        4 => {
            let mut big = p;
            big.extend(std::iter::repeat_n(b'x', rng.random_range(124..=400)));
            big
        }
        _ => {
            p.extend_from_slice(random_string(rng, 30).as_bytes());
            p
        }
    }
}

const BAD_UTF8: [&[u8]; 8] = [
    b"\xff",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
    b"\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xc3\x28",
];

fn invalid_utf8(rng: &mut StdRng) -> Vec<Frame> {
    let bad = BAD_UTF8.choose(rng).copied().unwrap_or(b"\xff");
    let mut text =
        format!("{{\"type\":\"send\",\"room\":\"{}\",\"text\":\"", room(rng)).into_bytes();
    text.extend_from_slice(bad);
    text.extend_from_slice(b"\"}");
    if rng.random_bool(0.5) {
        return vec![Frame::new(OP_TEXT, text)];
    }
    let pieces = split(&text, rng.random_range(2..=4), rng);
    let last = pieces.len() - 1;
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, p)| Frame::new(if i == 0 { OP_TEXT } else { OP_CONT }, p).fin(i == last))
        .collect()
}

fn reserved(rng: &mut StdRng) -> Frame {
    let data = valid_frame(rng).to_string().into_bytes();
    match rng.random_range(0..3) {
        0 => {
            let mut f = Frame::new(OP_TEXT, data);
            f.rsv = *[0x20u8, 0x10, 0x30, 0x70].choose(rng).unwrap_or(&0x20);
            f
        }
        1 => Frame::new(
            *[3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]
                .choose(rng)
                .unwrap_or(&3),
            data,
        ),
        _ => Frame::new(OP_PING, random_bytes_in(rng, 126..=300)),
    }
}

/// An RSV1 frame; returns it and whether the gateway must end the connection.
fn deflate_frame(ctx: &Ctx, rng: &mut StdRng) -> (Frame, bool) {
    let (payload, fatal) = match rng.random_range(0..3) {
        0 => (random_bytes_in(rng, 1..512), true),
        1 => (ctx.bomb.as_ref().clone(), true),
        // A well-formed compressed message: legal when the extension was agreed.
        _ => (
            compress(valid_frame(rng).to_string().as_bytes()),
            !ctx.deflate,
        ),
    };
    let mut f = Frame::new(OP_TEXT, payload);
    f.rsv = RSV1;
    // Without the extension any RSV1 frame is a protocol violation.
    (f, fatal || !ctx.deflate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ctx() -> Ctx {
        Ctx {
            deflate: true,
            bomb: std::sync::Arc::new(deflate_bomb(1 << 20)),
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    #[test]
    fn masked_frame_header_has_the_three_length_forms() {
        let mut rng = StdRng::seed_from_u64(1);
        let short = Frame::new(OP_TEXT, vec![b'a'; 10]).encode(&mut rng);
        assert_eq!(short[..2], [0x81, 0x80 | 10]);
        assert_eq!(short.len(), 2 + 4 + 10);
        let medium = Frame::new(OP_TEXT, vec![b'a'; 300]).encode(&mut rng);
        assert_eq!(medium[..4], [0x81, 0x80 | 126, 1, 44]);
        let mut huge = Frame::new(OP_BINARY, Vec::new());
        huge.declared_len = Some(u64::MAX);
        let h = huge.encode(&mut rng);
        assert_eq!(h[1], 0x80 | 127);
        assert_eq!(h[2..10], [0xff; 8]);
    }

    #[test]
    fn masking_round_trips() {
        let mut rng = StdRng::seed_from_u64(2);
        let data = b"{\"type\":\"ping\"}".to_vec();
        let wire = Frame::new(OP_TEXT, data.clone()).encode(&mut rng);
        let key = &wire[2..6];
        let unmasked: Vec<u8> = wire[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(unmasked, data);
    }

    #[test]
    fn every_kind_generates_frames() {
        let mut rng = StdRng::seed_from_u64(3);
        let ctx = ctx();
        for kind in Kind::NON_FATAL.iter().chain(Kind::FATAL.iter()) {
            for _ in 0..2000 {
                let step = generate(*kind, &ctx, &mut rng);
                assert!(!step.chunks.is_empty(), "{kind:?}");
                assert!(step.chunks.iter().all(|c| !c.is_empty()), "{kind:?}");
            }
        }
    }

    #[test]
    fn random_and_mutated_text_is_most_of_the_mix() {
        let mut rng = StdRng::seed_from_u64(4);
        let n = 100_000;
        let text = (0..n)
            .filter(|_| {
                matches!(
                    Kind::pick_non_fatal(&mut rng),
                    Kind::Mutated | Kind::RandomJson | Kind::RandomText
                )
            })
            .count();
        assert!(text * 100 > n * 60, "{text} of {n}");
        assert_eq!(Kind::NON_FATAL_WEIGHTS.iter().sum::<u32>(), 100);
    }

    #[test]
    fn random_text_is_utf8_and_a_fragmented_message_a_few_frames() {
        let mut rng = StdRng::seed_from_u64(5);
        let ctx = ctx();
        for _ in 0..2000 {
            assert!(String::from_utf8(random_text(&mut rng)).is_ok());
        }
        let frames: usize = (0..2000)
            .map(|_| generate(Kind::Fragmented, &ctx, &mut rng).chunks.len())
            .sum();
        assert!(frames < 2000 * 9, "{frames} wire frames in 2000 messages");
    }

    #[test]
    fn the_bomb_is_small_on_the_wire() {
        let bomb = deflate_bomb(8 << 20);
        assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    }
}
