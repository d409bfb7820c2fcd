//! Wire formats the load generator speaks: roomcast protocol v1 (JSON text frames, see
//! `docs/protocol.md`) and Socket.IO v4 over Engine.IO v4 WebSocket framing (for the peer in
//! `benches/peers/socketio`). Both are decoded into one [`Event`] so the rest of the bench is
//! protocol-agnostic. Also the payload header the bench embeds in every message text.
//!
//! roomcast client frames and message ids are `roomcast-protocol`'s ([`ClientFrame`],
//! [`MsgId`]); decoding server frames stays here: one serde pass into borrowed fields
//! ([`decode`]), which is the hot path of a bench holding thousands of connections.

use std::borrow::Cow;

use roomcast_protocol::{ClientFrame, MsgId};
use serde::Deserialize;
use serde_json::json;

/// Which server the bench talks to.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// roomcast protocol v1 (`ws://HOST/ws`).
    Roomcast,
    /// Socket.IO v4 / Engine.IO v4 WebSocket transport (`ws://HOST/socket.io/?EIO=4&transport=websocket`).
    Socketio,
}

/// Parses a message id, i.e. a room offset. roomcast writes [`MsgId`]s (`"<ms>-<seq>"`);
/// the Socket.IO peer a per-room counter `"<n>"`, read as `MsgId { ms: n, seq: 0 }` so both
/// order alike (`ms` first, then `seq`).
pub fn parse_id(protocol: Protocol, s: &str) -> Option<MsgId> {
    match protocol {
        Protocol::Roomcast => s.parse().ok(),
        Protocol::Socketio => s.parse().ok().or_else(|| {
            Some(MsgId {
                ms: s.parse().ok()?,
                seq: 0,
            })
        }),
    }
}

/// A decoded server frame, for either protocol.
#[derive(Debug)]
pub enum Event<'a> {
    /// roomcast `welcome`.
    Welcome,
    /// Engine.IO open packet (`0{...}`): the client must answer `40`.
    EioOpen,
    /// Socket.IO namespace connect confirmation (`40{...}`).
    SioConnected,
    /// Engine.IO ping (`2`): the client must answer `3`.
    EioPing,
    /// Answer to a join.
    Joined {
        room: Cow<'a, str>,
        offset: Option<MsgId>,
        recovered: Option<bool>,
        /// Entries in its `members` list (counted, not kept).
        members_listed: Option<usize>,
        /// `member_count`, when the server sends it (large rooms list only the first
        /// members and give the total here).
        member_count: Option<u64>,
    },
    /// A chat message in a joined room.
    Message {
        room: Cow<'a, str>,
        id: Option<MsgId>,
        text: Cow<'a, str>,
    },
    /// Answer to a send.
    Ack {
        reference: Option<Cow<'a, str>>,
        id: Option<MsgId>,
    },
    /// A refused frame.
    Error {
        code: Cow<'a, str>,
        reference: Option<Cow<'a, str>>,
    },
    /// Another member joined or left (`event` `join` / `leave`), or a summary of a large
    /// room's changes (`event` `summary`, no `user`): only counted.
    Presence { summary: bool },
    /// More of a room's member list (`members`, sent after a `joined` that listed only
    /// the first members): only counted.
    Members,
    /// `left`, `typing` and anything else the bench only counts (unknown frame types
    /// included, so a newer server never fails a run).
    Other,
}

/// What kind of frame a server sent, for the per-type frame and byte counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Welcome,
    Joined,
    Presence,
    Members,
    Message,
    Ack,
    Error,
    /// Everything else, control frames (ping, close) included.
    Other,
}

impl FrameKind {
    /// Every kind, in report order.
    pub const ALL: [FrameKind; 8] = [
        FrameKind::Welcome,
        FrameKind::Joined,
        FrameKind::Presence,
        FrameKind::Members,
        FrameKind::Message,
        FrameKind::Ack,
        FrameKind::Error,
        FrameKind::Other,
    ];

    /// The name in reports (the protocol's `type`, `other` for the rest).
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Welcome => "welcome",
            FrameKind::Joined => "joined",
            FrameKind::Presence => "presence",
            FrameKind::Members => "members",
            FrameKind::Message => "message",
            FrameKind::Ack => "ack",
            FrameKind::Error => "error",
            FrameKind::Other => "other",
        }
    }

    /// Position in [`FrameKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl Event<'_> {
    /// The frame kind this event was decoded from.
    pub fn kind(&self) -> FrameKind {
        match self {
            Event::Welcome => FrameKind::Welcome,
            Event::Joined { .. } => FrameKind::Joined,
            Event::Presence { .. } => FrameKind::Presence,
            Event::Members => FrameKind::Members,
            Event::Message { .. } => FrameKind::Message,
            Event::Ack { .. } => FrameKind::Ack,
            Event::Error { .. } => FrameKind::Error,
            Event::EioOpen | Event::SioConnected | Event::EioPing | Event::Other => {
                FrameKind::Other
            }
        }
    }
}

/// The length of a JSON array, counted without keeping its elements (a `joined` of the
/// current gateway lists every member of the room: thousands of objects in a join storm).
/// Any other JSON value counts as 0, so an unexpected shape never fails a frame.
struct ListLen(usize);

impl<'de> Deserialize<'de> for ListLen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct Count;
        impl<'de> Visitor<'de> for Count {
            type Value = ListLen;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ListLen, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(ListLen(n))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ListLen, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(ListLen(0))
            }
            fn visit_bool<E>(self, _: bool) -> Result<ListLen, E> {
                Ok(ListLen(0))
            }
            fn visit_i64<E>(self, _: i64) -> Result<ListLen, E> {
                Ok(ListLen(0))
            }
            fn visit_u64<E>(self, _: u64) -> Result<ListLen, E> {
                Ok(ListLen(0))
            }
            fn visit_f64<E>(self, _: f64) -> Result<ListLen, E> {
                Ok(ListLen(0))
            }
            fn visit_str<E>(self, _: &str) -> Result<ListLen, E> {
                Ok(ListLen(0))
            }
            fn visit_unit<E>(self) -> Result<ListLen, E> {
                Ok(ListLen(0))
            }
        }
        d.deserialize_any(Count)
    }
}

/// The union of fields the bench reads from any server frame (both protocols use the same
/// field names for the payload).
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    offset: Option<Cow<'a, str>>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(rename = "ref", borrow, default)]
    reference: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    /// `presence`: `join`, `leave` or `summary`.
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(default)]
    members: Option<ListLen>,
    #[serde(default, deserialize_with = "lenient_u64")]
    member_count: Option<u64>,
}

/// A non-negative integer, or `None` for anything else (a newer server must not fail a
/// frame by the shape of a field the bench only reports).
fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(serde_json::Value::deserialize(d)?.as_u64())
}

fn event_from<'a>(protocol: Protocol, kind: &str, f: Fields<'a>) -> Event<'a> {
    let id = |s: &Option<Cow<'_, str>>| s.as_deref().and_then(|s| parse_id(protocol, s));
    match kind {
        "welcome" => Event::Welcome,
        "joined" => Event::Joined {
            room: f.room.unwrap_or_default(),
            offset: id(&f.offset),
            recovered: f.recovered,
            members_listed: f.members.map(|m| m.0),
            member_count: f.member_count,
        },
        "presence" => Event::Presence {
            summary: f.event.as_deref() == Some("summary"),
        },
        "members" => Event::Members,
        "message" => Event::Message {
            id: id(&f.id),
            room: f.room.unwrap_or_default(),
            text: f.text.unwrap_or_default(),
        },
        "ack" => Event::Ack {
            id: id(&f.id),
            reference: f.reference,
        },
        "error" => Event::Error {
            code: f.code.unwrap_or(Cow::Borrowed("unknown")),
            reference: f.reference,
        },
        _ => Event::Other,
    }
}

/// Decodes one text frame from the server.
pub fn decode(protocol: Protocol, frame: &str) -> Result<Event<'_>, String> {
    match protocol {
        Protocol::Roomcast => {
            let f: Fields<'_> =
                serde_json::from_str(frame).map_err(|e| format!("bad frame: {e}"))?;
            let kind = f.ty.clone().unwrap_or_default();
            Ok(event_from(Protocol::Roomcast, &kind, f))
        }
        Protocol::Socketio => decode_socketio(frame),
    }
}

fn decode_socketio(frame: &str) -> Result<Event<'_>, String> {
    // Engine.IO packet type is the first character; Socket.IO packet type the second.
    let mut chars = frame.chars();
    match (chars.next(), chars.next()) {
        (Some('0'), _) => Ok(Event::EioOpen),
        (Some('2'), _) => Ok(Event::EioPing),
        (Some('3'), _) | (Some('6'), _) => Ok(Event::Other),
        (Some('4'), Some('0')) => Ok(Event::SioConnected),
        (Some('4'), Some('2')) => {
            let body = &frame[2..];
            // Skip an optional ack id (digits) before the JSON array.
            let body = body.trim_start_matches(|c: char| c.is_ascii_digit());
            let (name, f): (Cow<'_, str>, Fields<'_>) =
                serde_json::from_str(body).map_err(|e| format!("bad socket.io event: {e}"))?;
            Ok(event_from(Protocol::Socketio, &name, f))
        }
        (Some('4'), Some('4')) => Ok(Event::Error {
            code: Cow::Borrowed("connect_error"),
            reference: None,
        }),
        (Some('1'), _) | (Some('4'), Some('1')) => Err("server closed the session".into()),
        _ => Ok(Event::Other),
    }
}

/// Encodes a join frame.
pub fn join(
    protocol: Protocol,
    room: &str,
    name: &str,
    since: Option<MsgId>,
    reference: &str,
) -> String {
    match protocol {
        Protocol::Roomcast => ClientFrame::Join {
            room: room.to_owned(),
            name: Some(name.to_owned()),
            since: since.map(|id| id.to_string()),
            token: None,
            history: None,
            reference: Some(reference.to_owned()),
        }
        .to_json(),
        Protocol::Socketio => {
            let mut v = json!({"room": room, "name": name, "ref": reference});
            if let Some(since) = since {
                // The peer's ids are plain counters.
                v["since"] = json!(since.ms.to_string());
            }
            format!("42{}", json!(["join", v]))
        }
    }
}

/// Encodes a send frame.
pub fn send(protocol: Protocol, room: &str, text: &str, reference: &str) -> String {
    match protocol {
        Protocol::Roomcast => ClientFrame::Send {
            room: room.to_owned(),
            text: text.to_owned(),
            idem: None,
            reference: Some(reference.to_owned()),
        }
        .to_json(),
        Protocol::Socketio => format!(
            "42{}",
            json!(["send", {"room": room, "text": text, "ref": reference}])
        ),
    }
}

/// Socket.IO: the namespace connect packet the client sends after the Engine.IO open.
pub const SIO_CONNECT: &str = "40";
/// Engine.IO pong.
pub const EIO_PONG: &str = "3";

/// The header the bench writes at the start of every message text, so a receiver can
/// compute the latency and attribute the delivery to a rate step without any shared state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Unix time in microseconds when the publisher wrote the frame.
    pub sent_us: u64,
    /// Index of the rate step the message belongs to.
    pub step: u32,
    /// Index of the URL the publisher was connected to (to tell cross-replica deliveries).
    pub url: u32,
    /// Publisher connection index and its sequence number (unique per run).
    pub conn: u32,
    pub seq: u64,
}

const TAG: &str = "rcb1";

impl Payload {
    /// Renders the header and pads the text with `x` up to `size` bytes.
    pub fn render(&self, size: usize) -> String {
        let mut s = format!(
            "{TAG} {} {} {} {} {} ",
            self.sent_us, self.step, self.url, self.conn, self.seq
        );
        if s.len() < size {
            s.extend(std::iter::repeat_n('x', size - s.len()));
        }
        s
    }

    /// Parses a header written by [`Payload::render`]; `None` for foreign texts.
    pub fn parse(text: &str) -> Option<Payload> {
        let mut it = text.split(' ');
        if it.next()? != TAG {
            return None;
        }
        Some(Payload {
            sent_us: it.next()?.parse().ok()?,
            step: it.next()?.parse().ok()?,
            url: it.next()?.parse().ok()?,
            conn: it.next()?.parse().ok()?,
            seq: it.next()?.parse().ok()?,
        })
    }
}

/// Current Unix time in microseconds.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_ms_first() {
        let a = parse_id(Protocol::Roomcast, "1732258000000-5").unwrap();
        let b = parse_id(Protocol::Roomcast, "1732258000001-0").unwrap();
        assert!(a < b);
        assert_eq!(
            parse_id(Protocol::Socketio, "17").unwrap(),
            MsgId { ms: 17, seq: 0 }
        );
        assert_eq!(
            parse_id(Protocol::Socketio, "5-1"),
            Some(MsgId { ms: 5, seq: 1 })
        );
        assert_eq!(
            parse_id(Protocol::Roomcast, "17"),
            None,
            "not a roomcast id"
        );
        assert_eq!(parse_id(Protocol::Roomcast, "x-1"), None);
        assert_eq!(parse_id(Protocol::Socketio, "x-1"), None);
    }

    #[test]
    fn roomcast_client_frames_are_the_protocol_crate_frames() {
        let join = join(
            Protocol::Roomcast,
            "r",
            "n",
            Some(MsgId { ms: 4, seq: 2 }),
            "j0",
        );
        assert_eq!(
            roomcast_protocol::parse_client_frame(&join).unwrap(),
            ClientFrame::Join {
                room: "r".into(),
                name: Some("n".into()),
                since: Some("4-2".into()),
                token: None,
                history: None,
                reference: Some("j0".into()),
            }
        );
        let send = send(Protocol::Roomcast, "r", "hi", "7");
        assert_eq!(send, r#"{"type":"send","room":"r","text":"hi","ref":"7"}"#);
    }

    #[test]
    fn payload_round_trips_and_pads() {
        let p = Payload {
            sent_us: 123,
            step: 2,
            url: 1,
            conn: 7,
            seq: 9,
        };
        let s = p.render(64);
        assert_eq!(s.len(), 64);
        assert_eq!(Payload::parse(&s), Some(p));
        assert_eq!(Payload::parse("hello"), None);
    }

    #[test]
    fn decodes_roomcast_message() {
        let f = r##"{"type":"message","room":"r","id":"5-1","from":{"name":"a","color":"#000000"},"text":"hi","ts":1}"##;
        match decode(Protocol::Roomcast, f).unwrap() {
            Event::Message { room, id, text } => {
                assert_eq!(room, "r");
                assert_eq!(id, Some(MsgId { ms: 5, seq: 1 }));
                assert_eq!(text, "hi");
            }
            e => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn decodes_joined_of_both_gateway_generations() {
        // Before issue 13: every member listed, no member_count.
        let old = r##"{"type":"joined","room":"r","you":{"name":"a","color":"#000000"},"members":[{"name":"a","color":"#000000"},{"name":"b","color":"#111111"}],"offset":"0-0"}"##;
        match decode(Protocol::Roomcast, old).unwrap() {
            Event::Joined {
                members_listed,
                member_count,
                offset,
                ..
            } => {
                assert_eq!(members_listed, Some(2));
                assert_eq!(member_count, None);
                assert_eq!(offset, Some(MsgId { ms: 0, seq: 0 }));
            }
            e => panic!("unexpected {e:?}"),
        }
        // After: the first members, the count and a cursor for the rest; unknown fields
        // are ignored.
        let new = r#"{"type":"joined","room":"r","you":{"name":"a"},"members":[],"member_count":5000,"members_next":"c1","offset":"5-1","new_field":{"x":[1]}}"#;
        match decode(Protocol::Roomcast, new).unwrap() {
            Event::Joined {
                members_listed,
                member_count,
                ..
            } => {
                assert_eq!(members_listed, Some(0));
                assert_eq!(member_count, Some(5000));
            }
            e => panic!("unexpected {e:?}"),
        }
        // A member_count of an unexpected shape is ignored, not an error.
        let odd = r#"{"type":"joined","room":"r","members":{"n":1},"member_count":"many","offset":"0-0"}"#;
        assert!(matches!(
            decode(Protocol::Roomcast, odd).unwrap(),
            Event::Joined {
                members_listed: Some(0),
                member_count: None,
                ..
            }
        ));
    }

    #[test]
    fn presence_summaries_members_pages_and_unknown_types_are_counted_not_errors() {
        let summary = r#"{"type":"presence","room":"r","event":"summary","joined":12,"left":3,"member_count":5009}"#;
        let e = decode(Protocol::Roomcast, summary).unwrap();
        assert!(matches!(e, Event::Presence { summary: true }));
        assert_eq!(e.kind(), FrameKind::Presence);
        let join = r##"{"type":"presence","room":"r","event":"join","user":{"name":"b","color":"#111111"}}"##;
        assert!(matches!(
            decode(Protocol::Roomcast, join).unwrap(),
            Event::Presence { summary: false }
        ));
        let page = r#"{"type":"members","room":"r","members":[{"name":"c"}],"members_next":null}"#;
        assert_eq!(
            decode(Protocol::Roomcast, page).unwrap().kind(),
            FrameKind::Members
        );
        let unknown = r#"{"type":"something_new","room":"r"}"#;
        assert_eq!(
            decode(Protocol::Roomcast, unknown).unwrap().kind(),
            FrameKind::Other
        );
    }

    #[test]
    fn decodes_socketio_frames() {
        assert!(matches!(
            decode(Protocol::Socketio, r#"0{"sid":"x"}"#).unwrap(),
            Event::EioOpen
        ));
        assert!(matches!(
            decode(Protocol::Socketio, "2").unwrap(),
            Event::EioPing
        ));
        assert!(matches!(
            decode(Protocol::Socketio, r#"40{"sid":"y"}"#).unwrap(),
            Event::SioConnected
        ));
        match decode(Protocol::Socketio, r#"42["ack",{"ref":"3","id":"12"}]"#).unwrap() {
            Event::Ack { reference, id } => {
                assert_eq!(reference.as_deref(), Some("3"));
                assert_eq!(id, Some(MsgId { ms: 12, seq: 0 }));
            }
            e => panic!("unexpected {e:?}"),
        }
        assert_eq!(
            join(
                Protocol::Socketio,
                "r",
                "n",
                Some(MsgId { ms: 4, seq: 0 }),
                "j0"
            ),
            r#"42["join",{"name":"n","ref":"j0","room":"r","since":"4"}]"#
        );
    }
}
