//! Frames: what clients send (parsed in one serde pass, diagnosed precisely when
//! malformed) and what the server sends (serialised once per replica and shared).

use serde::{Deserialize, Serialize};

use crate::codes::ErrorCode;
use crate::id::MsgId;
use crate::rules::User;

/// Longest `ref` a client may attach to a frame.
pub const MAX_REF_BYTES: usize = 64;

/// A frame from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame {
    Join {
        room: String,
        /// The display name; required in anonymous mode, ignored in jwt mode (the token's
        /// `name` claim is the name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
        /// A room token (jwt mode): grants this one room to the connection's `sub`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Without `since`: replay the room's last `history` messages (at most
        /// `history.size`) before live ones.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        history: Option<u32>,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Leave {
        room: String,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Send {
        room: String,
        text: String,
        /// The client's idempotency key (at most [`MAX_IDEM_BYTES`]): a retry with the
        /// same key in the same room within `api.idempotency_ttl` is acked with the first
        /// id and publishes nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idem: Option<String>,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// "I am typing" in a joined room: relayed to the room's other members, never stored.
    Typing {
        room: String,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// A page of a joined room's members after the cursor `after` (absent: from the
    /// start), at most `limit` (default `presence.members_in_join`, at most
    /// [`MAX_MEMBERS_LIMIT`]).
    Members {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// The connection token (jwt mode), when not given as `?token=` on `/ws`.
    Auth {
        token: String,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// A new connection token for the same `sub`, before the current one expires.
    Refresh {
        token: String,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// Is the connection alive? Answered by `pong` at once. For clients that cannot see
    /// WebSocket pings (browsers' scripts) and want to notice a connection that died
    /// silently.
    Ping {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
}

/// The `type`s a client may send.
pub const CLIENT_TYPES: [&str; 8] = [
    "join", "leave", "send", "typing", "members", "auth", "refresh", "ping",
];

/// Largest `limit` of a `members` request.
pub const MAX_MEMBERS_LIMIT: u32 = 1000;

/// Longest `after` cursor of a `members` request.
pub const MAX_CURSOR_BYTES: usize = 1024;

/// Longest `idem` key a client may attach to a `send`.
pub const MAX_IDEM_BYTES: usize = 64;

impl ClientFrame {
    /// The client's `ref`, echoed in the answer.
    pub fn reference(&self) -> Option<&str> {
        match self {
            ClientFrame::Join { reference, .. }
            | ClientFrame::Leave { reference, .. }
            | ClientFrame::Send { reference, .. }
            | ClientFrame::Typing { reference, .. }
            | ClientFrame::Members { reference, .. }
            | ClientFrame::Auth { reference, .. }
            | ClientFrame::Refresh { reference, .. }
            | ClientFrame::Ping { reference } => reference.as_deref(),
        }
    }

    /// The frame as JSON text (for clients: the load generator, probes, tests).
    pub fn to_json(&self) -> String {
        // Plain strings only: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
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

    /// The `error` frame as JSON text.
    pub fn to_json(&self) -> String {
        ServerFrame::Error {
            code: self.code,
            message: &self.message,
            reference: self.reference.as_deref(),
        }
        .to_json()
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
            if let ClientFrame::Send {
                idem: Some(idem),
                reference,
                ..
            } = &frame
                && (idem.is_empty() || idem.len() > MAX_IDEM_BYTES)
            {
                return Err(FrameError::new(
                    ErrorCode::BadRequest,
                    format!("`idem` must be 1 to {MAX_IDEM_BYTES} bytes"),
                )
                .with_ref(reference.as_deref()));
            }
            if let ClientFrame::Members {
                after,
                limit,
                reference,
                ..
            } = &frame
            {
                if limit.is_some_and(|l| l == 0 || l > MAX_MEMBERS_LIMIT) {
                    return Err(FrameError::new(
                        ErrorCode::BadRequest,
                        format!("`limit` must be 1 to {MAX_MEMBERS_LIMIT}"),
                    )
                    .with_ref(reference.as_deref()));
                }
                if after.as_ref().is_some_and(|a| a.len() > MAX_CURSOR_BYTES) {
                    return Err(FrameError::new(
                        ErrorCode::BadRequest,
                        format!("`after` is longer than {MAX_CURSOR_BYTES} bytes"),
                    )
                    .with_ref(reference.as_deref()));
                }
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
        Some(serde_json::Value::String(t)) if !CLIENT_TYPES.contains(&t.as_str()) => {
            let shown: String = t.chars().take(32).collect();
            FrameError::new(
                ErrorCode::UnknownType,
                format!(
                    "unknown type `{shown}`; expected {}",
                    CLIENT_TYPES.join(", ")
                ),
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

/// A frame to a client, borrowing its parts; serialised once and shared.
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
        /// The first members (at most `presence.members_in_join`, the joiner included).
        members: &'a [User],
        /// The room's member count (one per user, on every replica).
        member_count: u64,
        /// More members than `members` holds: pass this as `after` in a `members` request.
        #[serde(skip_serializing_if = "Option::is_none")]
        members_next: Option<&'a str>,
        offset: MsgId,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Message {
        room: &'a str,
        id: MsgId,
        from: &'a User,
        text: &'a str,
        /// Publish time, Unix milliseconds.
        ts: u64,
        /// Sent as part of a join's replay (`since` or `history`), not live.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        replay: bool,
    },
    /// A join or leave in a room of at most `presence.notify_max_members` members.
    Presence {
        room: &'a str,
        event: &'a str,
        user: &'a User,
        /// The member count after the event.
        #[serde(skip_serializing_if = "Option::is_none")]
        member_count: Option<u64>,
    },
    /// Joins and leaves in a larger room since the last summary (`event` is `"summary"`).
    #[serde(rename = "presence")]
    PresenceSummary {
        room: &'a str,
        event: &'a str,
        member_count: u64,
        joins: u64,
        leaves: u64,
    },
    /// A page of a room's members, the answer to a `members` request.
    Members {
        room: &'a str,
        members: &'a [User],
        member_count: u64,
        /// More members follow: pass this as `after` for the next page.
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<&'a str>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    Ack {
        #[serde(rename = "ref")]
        reference: Option<&'a str>,
        id: MsgId,
        /// The `idem` key was seen before: this is the first send's id, nothing new was
        /// published.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    Left {
        room: &'a str,
        /// Why the server took the member out (`"removed"` by the server API); absent
        /// when the client left.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    /// Another member is typing in the room.
    Typing {
        room: &'a str,
        user: &'a User,
    },
    /// The connection token expires in `in_ms` milliseconds: send `refresh`.
    Expiring {
        in_ms: u64,
    },
    /// The refresh was accepted; the new `exp` (Unix seconds).
    Refreshed {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        exp: u64,
    },
    /// The answer to `ping`.
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Plain structs: serialising cannot fail; keep a valid frame if it ever did.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"encoding failed"}"#.to_string()
        })
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
    fn client_frames_round_trip() {
        let frame = ClientFrame::Join {
            room: "a".into(),
            name: Some("x".into()),
            since: None,
            token: None,
            history: None,
            reference: Some("r1".into()),
        };
        assert_eq!(
            frame.to_json(),
            r#"{"type":"join","room":"a","name":"x","ref":"r1"}"#
        );
        assert_eq!(parse_client_frame(&frame.to_json()).unwrap(), frame);
    }

    #[test]
    fn malformed_frames_get_precise_codes() {
        assert_eq!(code("not json"), ErrorCode::BadRequest);
        assert_eq!(code("null"), ErrorCode::BadRequest);
        assert_eq!(code("42"), ErrorCode::BadRequest);
        assert_eq!(code("[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"auth"}"#), ErrorCode::BadRequest);
        assert!(matches!(
            parse_client_frame(r#"{"type":"auth","token":"t"}"#),
            Ok(ClientFrame::Auth { .. })
        ));
        assert_eq!(code(r#"{"type":7}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"send","room":"a"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"type":"send","room":1,"text":"x"}"#),
            ErrorCode::BadRequest
        );
        let long_ref = format!(
            r#"{{"type":"leave","room":"a","ref":"{}"}}"#,
            "r".repeat(65)
        );
        assert_eq!(code(&long_ref), ErrorCode::BadRequest);
    }

    #[test]
    fn members_requests_are_bounded() {
        assert!(matches!(
            parse_client_frame(r#"{"type":"members","room":"a","after":"u:x","limit":50}"#),
            Ok(ClientFrame::Members {
                limit: Some(50),
                ..
            })
        ));
        assert_eq!(
            code(r#"{"type":"members","room":"a","limit":0}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"members","room":"a","limit":1001}"#),
            ErrorCode::BadRequest
        );
        let long = format!(
            r#"{{"type":"members","room":"a","after":"{}"}}"#,
            "x".repeat(1025)
        );
        assert_eq!(code(&long), ErrorCode::BadRequest);
        let summary = ServerFrame::PresenceSummary {
            room: "a",
            event: "summary",
            member_count: 250,
            joins: 3,
            leaves: 1,
        }
        .to_json();
        assert_eq!(
            summary,
            r#"{"type":"presence","room":"a","event":"summary","member_count":250,"joins":3,"leaves":1}"#
        );
    }

    #[test]
    fn error_echoes_ref() {
        let e = parse_client_frame(r#"{"type":"send","room":"a","ref":"r9"}"#).unwrap_err();
        assert_eq!(e.reference.as_deref(), Some("r9"));
        assert_eq!(peek_ref(r#"{"ref":"r2","x":1}"#).as_deref(), Some("r2"));
        assert_eq!(peek_ref("not json"), None);
    }

    #[test]
    fn server_frames_encode_ids_as_strings() {
        let user = User::new("alice".into());
        let text = ServerFrame::Message {
            room: "a",
            id: MsgId { ms: 5, seq: 1 },
            from: &user,
            text: "hi",
            ts: 5,
            replay: false,
        }
        .to_json();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["id"], "5-1");
        assert_eq!(v["from"]["name"], "alice");
    }
}
