//! The codes clients and operators rely on: the error codes of `error` frames, and one
//! table of why a connection ends (WebSocket close code, close reason text, metric
//! label), from which the gateway's close frames, its `roomcast_disconnects_total`
//! labels and `docs/protocol.md` all derive.

use serde::{Deserialize, Serialize};

/// The stable error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// A bad, missing or expired token (the message says which, never the token).
    Unauthorized,
    /// The token does not allow this room or this publish, or the server API removed
    /// the user from the room.
    Forbidden,
    /// The publish hook refused the message (the message says why); nothing was published.
    Rejected,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 15] = [
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
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::Rejected,
    ];

    /// The code as it appears on the wire and in metric labels.
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
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Rejected => "rejected",
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// The client closed the connection or went away.
    Client,
    /// The replica is draining (SIGTERM).
    Drain,
    /// The client did not read fast enough; its outbound queue filled.
    SlowConsumer,
    /// A frame over `limits.max_frame_bytes`.
    TooLarge,
    /// The client kept flooding after `rate_limited` errors.
    Policy,
    /// No frame or pong within `heartbeat.timeout`.
    Heartbeat,
    /// An unexpected server error.
    Error,
    /// No valid token within `auth.timeout` (jwt mode).
    Unauthorized,
    /// The token expired without a refresh.
    TokenExpired,
    /// The server removed this user (server API).
    Forbidden,
    /// The replica could not catch up a room it had missed messages of (after a bus
    /// reconnect or failover): its members must resume with `since` to get them.
    Resync,
}

/// One row of the disconnect table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    /// The close frame the server sends: `(code, reason text)`; `None` when the client
    /// closed first (the server only completes the close handshake).
    pub close: Option<(u16, &'static str)>,
    /// The `reason` label of `roomcast_disconnects_total`.
    pub label: &'static str,
}

impl DisconnectReason {
    pub const ALL: [DisconnectReason; 11] = [
        DisconnectReason::Client,
        DisconnectReason::Drain,
        DisconnectReason::SlowConsumer,
        DisconnectReason::TooLarge,
        DisconnectReason::Policy,
        DisconnectReason::Heartbeat,
        DisconnectReason::Error,
        DisconnectReason::Unauthorized,
        DisconnectReason::TokenExpired,
        DisconnectReason::Forbidden,
        DisconnectReason::Resync,
    ];

    /// The table: close code, close reason text and metric label of each reason.
    pub const fn info(self) -> Disconnect {
        let (close, label) = match self {
            DisconnectReason::Client => (None, "client"),
            DisconnectReason::Drain => (Some((1001, "draining")), "drain"),
            DisconnectReason::SlowConsumer => (Some((1008, "slow consumer")), "slow_consumer"),
            DisconnectReason::TooLarge => (Some((1009, "frame too large")), "too_large"),
            DisconnectReason::Policy => (Some((1008, "rate limit")), "policy"),
            DisconnectReason::Heartbeat => (Some((1008, "heartbeat timeout")), "heartbeat"),
            DisconnectReason::Error => (Some((1011, "internal error")), "error"),
            DisconnectReason::Unauthorized => (Some((4001, "unauthorized")), "unauthorized"),
            DisconnectReason::TokenExpired => (Some((4002, "token expired")), "token_expired"),
            DisconnectReason::Forbidden => (Some((4003, "forbidden")), "forbidden"),
            DisconnectReason::Resync => (Some((1013, "resume")), "resync"),
        };
        Disconnect { close, label }
    }

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        self.info().label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_as_json() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn every_disconnect_has_a_distinct_label_and_a_close_unless_the_client_closed() {
        let mut labels: Vec<_> = DisconnectReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), DisconnectReason::ALL.len());
        for reason in DisconnectReason::ALL {
            assert_eq!(
                reason.info().close.is_none(),
                reason == DisconnectReason::Client
            );
        }
        assert_eq!(
            DisconnectReason::Drain.info().close,
            Some((1001, "draining"))
        );
    }

    /// The user documentation states the same table: every close code and reason, every
    /// error code, and every disconnect metric label.
    #[test]
    fn the_docs_list_every_code_of_the_tables() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/");
        let read = |f: &str| {
            std::fs::read_to_string(format!("{root}{f}")).unwrap_or_else(|e| panic!("{f}: {e}"))
        };
        let protocol = read("protocol.md");
        let operations = read("operations.md");
        for reason in DisconnectReason::ALL {
            if let Some((code, text)) = reason.info().close {
                let row = format!("| {code} | `{text}` |");
                assert!(protocol.contains(&row), "docs/protocol.md lacks {row}");
            }
            let label = format!("`{}`", reason.as_str());
            let line = operations
                .lines()
                .find(|l| l.contains("roomcast_disconnects_total"))
                .unwrap_or_default();
            assert!(line.contains(&label), "docs/operations.md lacks {label}");
        }
        for code in ErrorCode::ALL {
            let row = format!("| `{}` |", code.as_str());
            assert!(protocol.contains(&row), "docs/protocol.md lacks {row}");
        }
    }
}
