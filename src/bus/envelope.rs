//! The bus envelope: what travels on a room's channel and what a room's history keeps,
//! encoded and decoded here and nowhere else (the Lua scripts only store and forward the
//! bytes this module makes).
//!
//! The message id never goes inside the envelope: the bus assigns it at publish time and
//! it travels beside the payload (the history entry's id; on a Redis channel, the frame
//! `"<id> <envelope>"`, see [`split_channel_frame`]).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::{MsgId, User};

/// One envelope (JSON, short keys: every message crosses the bus once per replica).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub(crate) enum Envelope {
    #[serde(rename = "m")]
    Message {
        #[serde(rename = "u")]
        from: User,
        #[serde(rename = "t")]
        text: String,
        /// Publish time, Unix microseconds.
        ts: u64,
        /// The publishing node and connection.
        #[serde(rename = "n")]
        node: String,
        #[serde(rename = "c")]
        conn: String,
        /// W3C `traceparent` of the sending span, when tracing is exported.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tp: Option<String>,
    },
    /// A typing indicator: relayed live, never stored, no id.
    #[serde(rename = "t")]
    Typing {
        #[serde(rename = "u")]
        user: User,
        #[serde(rename = "n")]
        node: String,
        #[serde(rename = "c")]
        conn: String,
    },
    #[serde(rename = "p")]
    Presence {
        #[serde(rename = "e")]
        event: PresenceEvent,
        #[serde(rename = "u")]
        user: User,
        #[serde(rename = "n")]
        node: String,
        #[serde(rename = "c")]
        conn: String,
        /// The room's presence sequence number of this event, assigned by the bus with
        /// the change (the Redis scripts append it): it orders the event against the
        /// member lists that joins read. 0 when not stamped.
        #[serde(default, rename = "q", skip_serializing_if = "is_zero")]
        seq: u64,
        /// The room's member count (one per user) after the event; stamped with `seq`.
        #[serde(default, rename = "m", skip_serializing_if = "is_zero")]
        count: u64,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PresenceEvent {
    Join,
    Leave,
}

impl PresenceEvent {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PresenceEvent::Join => "join",
            PresenceEvent::Leave => "leave",
        }
    }
}

impl Envelope {
    /// The envelope as JSON text.
    pub(crate) fn encode(&self) -> String {
        // Strings and numbers only: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub(crate) fn decode(payload: &[u8]) -> Result<Envelope, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

/// A node-wide control message (the server API's disconnect and kick), carried on the
/// bus's control channel to every replica; each answers the requester with [`Control::Done`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum Control {
    /// Close every connection of `user` with 4003.
    Disconnect {
        user: String,
        /// Told to each connection (an `error` frame, code `forbidden`) before it closes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The request id and the requesting node, for the answer.
        req: String,
        from: String,
    },
    /// Take `user` out of `room` (`left` with reason `removed`).
    Kick {
        room: String,
        user: String,
        req: String,
        from: String,
    },
    /// One replica's answer to request `req` of node `to`: `n` connections affected.
    Done { req: String, to: String, n: u64 },
}

impl Control {
    pub(crate) fn encode(&self) -> String {
        // Strings and numbers only: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub(crate) fn decode(payload: &[u8]) -> Result<Control, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

/// Splits a Redis channel frame into the message id (messages: `"<id> <envelope>"`) or
/// none (presence and typing: the bare envelope, which starts with `{`). `None` if it is neither.
///
/// Replicas of earlier builds published messages as the envelope with the id spliced in
/// first (`{"id":"<id>",...}`); those are still read (the envelope decoder ignores the
/// field), so during a rolling upgrade this replica receives the old replicas' messages.
pub(crate) fn split_channel_frame(frame: Bytes) -> Option<(Option<MsgId>, Bytes)> {
    if frame.first() == Some(&b'{') {
        const LEGACY: &[u8] = br#"{"id":""#;
        let legacy_id = frame.strip_prefix(LEGACY).and_then(|rest| {
            let end = rest.iter().position(|b| *b == b'"')?;
            std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
        });
        return Some((legacy_id, frame));
    }
    let space = frame.iter().position(|b| *b == b' ')?;
    let id = std::str::from_utf8(&frame[..space]).ok()?.parse().ok()?;
    Some((Some(id), frame.slice(space + 1..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_carry_no_id() {
        let message = Envelope::Message {
            from: User::new("alice".into()),
            text: "hi \"there\"".into(),
            ts: 7,
            node: "n1".into(),
            conn: "c1".into(),
            tp: None,
        };
        let text = message.encode();
        assert!(!text.contains("\"id\""), "{text}");
        assert_eq!(Envelope::decode(text.as_bytes()).unwrap(), message);
        // Entries written by earlier versions had an `id` inside: still readable.
        let old = r##"{"id":"1-0","k":"m","u":{"name":"a","color":"#fff"},"t":"x","ts":1,"n":"n","c":"c"}"##;
        assert!(matches!(
            Envelope::decode(old.as_bytes()),
            Ok(Envelope::Message { .. })
        ));
    }

    #[test]
    fn channel_frames_carry_the_id_beside_the_envelope() {
        let (id, body) = split_channel_frame(Bytes::from_static(b"12-3 {\"k\":\"m\"}")).unwrap();
        assert_eq!(id, Some(MsgId { ms: 12, seq: 3 }));
        assert_eq!(&body[..], b"{\"k\":\"m\"}");
        let (id, body) = split_channel_frame(Bytes::from_static(b"{\"k\":\"p\"}")).unwrap();
        assert_eq!((id, &body[..]), (None, &b"{\"k\":\"p\"}"[..]));
        assert!(split_channel_frame(Bytes::from_static(b"nonsense")).is_none());
        // As published by earlier builds: the id spliced into the envelope.
        let (id, body) =
            split_channel_frame(Bytes::from_static(b"{\"id\":\"7-1\",\"k\":\"m\"}")).unwrap();
        assert_eq!(id, Some(MsgId { ms: 7, seq: 1 }));
        assert_eq!(&body[..], b"{\"id\":\"7-1\",\"k\":\"m\"}");
        assert!(split_channel_frame(Bytes::from_static(b"x-1 {}")).is_none());
    }
}
