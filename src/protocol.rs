//! The client wire protocol v1 (see `docs/protocol.md`): client frames parsed with
//! precise error codes, server frames encoded once to shared bytes, validation of room
//! and display names, message ids (room offsets) and name colors.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};

/// Longest `ref` a client may attach to a frame.
pub const MAX_REF_BYTES: usize = 64;
/// Longest room name, in characters.
pub const MAX_ROOM_CHARS: usize = 64;
/// Longest display name after trimming, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// A frame from a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame {
    Join {
        room: String,
        name: String,
        #[serde(default)]
        since: Option<String>,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    Leave {
        room: String,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    Send {
        room: String,
        text: String,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
}

impl ClientFrame {
    /// The client's `ref`, echoed in the answer.
    pub fn reference(&self) -> Option<&str> {
        match self {
            ClientFrame::Join { reference, .. }
            | ClientFrame::Leave { reference, .. }
            | ClientFrame::Send { reference, .. } => reference.as_deref(),
        }
    }
}

/// The stable error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    InvalidRoom,
    InvalidName,
    NotJoined,
    AlreadyJoined,
    TooManyRooms,
    TooLarge,
    RateLimited,
    Unavailable,
    Draining,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownType,
        ErrorCode::InvalidRoom,
        ErrorCode::InvalidName,
        ErrorCode::NotJoined,
        ErrorCode::AlreadyJoined,
        ErrorCode::TooManyRooms,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Draining,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Draining => "draining",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A refusal to send back to the client as an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    pub reference: Option<String>,
}

impl FrameError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reference: None,
        }
    }

    pub fn with_ref(mut self, reference: Option<&str>) -> Self {
        self.reference = reference.map(str::to_owned);
        self
    }
}

/// Parses one client text frame. Well-formed frames take the fast path (one serde pass);
/// anything else is diagnosed so the client gets the most precise error code.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(frame) => {
            if frame.reference().is_some_and(|r| r.len() > MAX_REF_BYTES) {
                return Err(FrameError::new(
                    ErrorCode::BadRequest,
                    format!("`ref` is longer than {MAX_REF_BYTES} bytes"),
                ));
            }
            Ok(frame)
        }
        Err(err) => Err(diagnose(text, &err)),
    }
}

fn diagnose(text: &str, err: &serde_json::Error) -> FrameError {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return FrameError::new(ErrorCode::BadRequest, format!("not valid JSON: {e}")),
    };
    let Some(obj) = value.as_object() else {
        return FrameError::new(ErrorCode::BadRequest, "a frame must be a JSON object");
    };
    let reference = obj
        .get("ref")
        .and_then(|r| r.as_str())
        .filter(|r| r.len() <= MAX_REF_BYTES);
    let error = match obj.get("type") {
        None => FrameError::new(ErrorCode::BadRequest, "missing field `type`"),
        Some(serde_json::Value::String(t)) if !matches!(t.as_str(), "join" | "leave" | "send") => {
            let shown: String = t.chars().take(32).collect();
            FrameError::new(
                ErrorCode::UnknownType,
                format!("unknown type `{shown}`; expected join, leave or send"),
            )
        }
        Some(serde_json::Value::String(_)) => {
            // serde's message names the field; drop its position suffix.
            let msg = err.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            FrameError::new(ErrorCode::BadRequest, msg)
        }
        Some(_) => FrameError::new(ErrorCode::BadRequest, "`type` must be a string"),
    };
    error.with_ref(reference)
}

/// The `ref` of a frame that is refused before it is handled (e.g. rate-limited);
/// `None` unless the frame is a JSON object with a string `ref` of acceptable length.
pub fn peek_ref(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct RefOnly {
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    }
    serde_json::from_str::<RefOnly>(text)
        .ok()?
        .reference
        .filter(|r| r.len() <= MAX_REF_BYTES)
}

/// Checks a room name: 1-64 characters of `[A-Za-z0-9._:-]`.
pub fn validate_room(room: &str) -> Result<(), FrameError> {
    let ok = !room.is_empty()
        && room.len() <= MAX_ROOM_CHARS
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FrameError::new(
            ErrorCode::InvalidRoom,
            "a room name is 1-64 characters of A-Z a-z 0-9 . _ : -",
        ))
    }
}

/// Trims a display name and checks it: 1-32 printable characters.
pub fn normalize_name(name: &str) -> Result<String, FrameError> {
    let trimmed = name.trim();
    let count = trimmed.chars().count();
    if count == 0 || count > MAX_NAME_CHARS || trimmed.chars().any(char::is_control) {
        return Err(FrameError::new(
            ErrorCode::InvalidName,
            "a display name is 1-32 printable characters",
        ));
    }
    Ok(trimmed.to_string())
}

/// A member as other members see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub color: String,
}

impl User {
    /// A user with the color derived from the (already normalized) name.
    pub fn new(name: String) -> Self {
        let color = color_for(&name).to_string();
        Self { name, color }
    }
}

const PALETTE: [&str; 16] = [
    "#e6194b", "#3cb44b", "#b8860b", "#4363d8", "#f58231", "#911eb4", "#0e9aa7", "#d6336c",
    "#2f9e44", "#9c36b5", "#1c7ed6", "#e8590c", "#5c940d", "#c2255c", "#087f5b", "#5f3dc4",
];

/// The color of a display name: FNV-1a over its bytes, so every replica agrees.
pub fn color_for(name: &str) -> &'static str {
    let mut hash: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    PALETTE[(hash % PALETTE.len() as u32) as usize]
}

/// A message id: the room offset assigned by the bus, written `"<ms>-<seq>"`
/// (the Redis stream id format; the memory bus uses the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MsgId {
    pub ms: u64,
    pub seq: u64,
}

impl MsgId {
    pub const ZERO: MsgId = MsgId { ms: 0, seq: 0 };

    /// The next id after `self` at time `now_ms`, as Redis assigns them.
    pub fn next(self, now_ms: u64) -> MsgId {
        if now_ms > self.ms {
            MsgId { ms: now_ms, seq: 0 }
        } else {
            MsgId {
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
    }
}

impl Ord for MsgId {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ms, self.seq).cmp(&(other.ms, other.seq))
    }
}

impl PartialOrd for MsgId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for MsgId {
    type Err = FrameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            FrameError::new(
                ErrorCode::BadRequest,
                "a message id looks like \"<ms>-<seq>\"",
            )
        };
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(MsgId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// A frame to a client. Encoded once (see [`ServerFrame::encode`]) and shared.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    Welcome {
        node: &'a str,
        conn: &'a str,
    },
    Joined {
        room: &'a str,
        you: &'a User,
        members: &'a [User],
        offset: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Message {
        room: &'a str,
        id: String,
        from: &'a User,
        text: &'a str,
        ts: u64,
    },
    Presence {
        room: &'a str,
        event: &'a str,
        user: &'a User,
    },
    Ack {
        #[serde(rename = "ref")]
        reference: Option<&'a str>,
        id: String,
    },
    Left {
        room: &'a str,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
}

impl ServerFrame<'_> {
    /// Serialises the frame to shared bytes; cloning the result is a reference-count bump.
    pub fn encode(&self) -> Utf8Bytes {
        // Serialising these plain structs cannot fail; keep a valid frame if it ever did.
        let text = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"encoding failed"}"#.to_string()
        });
        Utf8Bytes::from(text)
    }
}

impl FrameError {
    pub fn encode(&self) -> Utf8Bytes {
        ServerFrame::Error {
            code: self.code,
            message: &self.message,
            reference: self.reference.as_deref(),
        }
        .encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse_client_frame(text).unwrap_err().code
    }

    #[test]
    fn parses_valid_frames() {
        let f = parse_client_frame(r#"{"type":"send","room":"a","text":"hi","ref":"c1"}"#).unwrap();
        assert_eq!(f.reference(), Some("c1"));
        assert!(matches!(
            parse_client_frame(r#"{"type":"join","room":"a","name":"x","since":"1-0"}"#),
            Ok(ClientFrame::Join { since: Some(_), .. })
        ));
    }

    #[test]
    fn malformed_frames_get_precise_codes() {
        assert_eq!(code("not json"), ErrorCode::BadRequest);
        assert_eq!(code("null"), ErrorCode::BadRequest);
        assert_eq!(code("42"), ErrorCode::BadRequest);
        assert_eq!(code("[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":7}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"send","room":"a"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"type":"send","room":1,"text":"x"}"#),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn error_echoes_ref() {
        let e = parse_client_frame(r#"{"type":"send","room":"a","ref":"r9"}"#).unwrap_err();
        assert_eq!(e.reference.as_deref(), Some("r9"));
    }

    #[test]
    fn room_and_name_rules() {
        assert!(validate_room("general").is_ok());
        assert!(validate_room("a.b_c:d-9").is_ok());
        assert!(validate_room("").is_err());
        assert!(validate_room("has space").is_err());
        assert!(validate_room(&"x".repeat(65)).is_err());
        assert_eq!(normalize_name("  alice ").unwrap(), "alice");
        assert!(normalize_name("   ").is_err());
        assert!(normalize_name(&"é".repeat(32)).is_ok());
        assert!(normalize_name(&"é".repeat(33)).is_err());
        assert!(normalize_name("a\u{7}b").is_err());
    }

    #[test]
    fn ids_order_and_round_trip() {
        let a: MsgId = "5-1".parse().unwrap();
        let b: MsgId = "5-10".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "5-10");
        assert!("5".parse::<MsgId>().is_err());
        assert_eq!(MsgId { ms: 5, seq: 3 }.next(5), MsgId { ms: 5, seq: 4 });
        assert_eq!(MsgId { ms: 5, seq: 3 }.next(9), MsgId { ms: 9, seq: 0 });
    }

    #[test]
    fn color_is_stable() {
        assert_eq!(color_for("alice"), color_for("alice"));
        assert!(color_for("bob").starts_with('#'));
    }
}
