//! Fuzz target `client_frame`: a client's text frame through the gateway's parsing and
//! the protocol rules the session applies to it (room names, display names, `since`
//! ids), checking that nothing panics and that what is accepted is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_protocol::frames::{MAX_IDEM_BYTES, MAX_REF_BYTES};
use roomcast_protocol::rules::{MAX_NAME_CHARS, is_valid_room};
use roomcast_protocol::{
    ClientFrame, MAX_CURSOR_BYTES, MAX_MEMBERS_LIMIT, MsgId, normalize_name, parse_client_frame,
    peek_ref, validate_room,
};

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 (the transport refuses anything else).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(r) = peek_ref(text) {
        assert!(r.len() <= MAX_REF_BYTES);
    }
    match parse_client_frame(text) {
        Ok(frame) => accepted(&frame),
        Err(e) => {
            // The echoed `ref` is bounded like an accepted one, and the error frame is JSON.
            assert!(
                e.reference
                    .as_ref()
                    .is_none_or(|r| r.len() <= MAX_REF_BYTES)
            );
            let v: serde_json::Value =
                serde_json::from_str(&e.to_json()).expect("error frame is JSON");
            assert_eq!(v["type"], "error");
        }
    }
});

/// Invariants of an accepted frame.
fn accepted(frame: &ClientFrame) {
    // It re-serialises to a frame that parses to the same frame.
    let json = frame.to_json();
    assert_eq!(parse_client_frame(&json).as_ref(), Ok(frame), "{json}");
    assert!(frame.reference().is_none_or(|r| r.len() <= MAX_REF_BYTES));
    match frame {
        ClientFrame::Join {
            room, name, since, ..
        } => {
            room_rule(room);
            if let Some(name) = name {
                name_rule(name);
            }
            if let Some(since) = since {
                id_rule(since);
            }
        }
        ClientFrame::Send { room, idem, .. } => {
            room_rule(room);
            assert!(
                idem.as_ref()
                    .is_none_or(|k| !k.is_empty() && k.len() <= MAX_IDEM_BYTES)
            );
        }
        ClientFrame::Members {
            room, after, limit, ..
        } => {
            room_rule(room);
            assert!(after.as_ref().is_none_or(|a| a.len() <= MAX_CURSOR_BYTES));
            assert!(limit.is_none_or(|l| (1..=MAX_MEMBERS_LIMIT).contains(&l)));
        }
        ClientFrame::Leave { room, .. } | ClientFrame::Typing { room, .. } => room_rule(room),
        ClientFrame::Auth { .. } | ClientFrame::Refresh { .. } | ClientFrame::Ping { .. } => {}
    }
}

/// The room rule: the two forms agree, and an accepted name is short plain ASCII.
fn room_rule(room: &str) {
    let ok = validate_room(room).is_ok();
    assert_eq!(ok, is_valid_room(room));
    if ok {
        assert!(!room.is_empty() && room.len() <= 64 && room.is_ascii());
        assert!(!room.contains(['*', ' ', '|', '{', '}', '"']));
    }
}

/// The display name rule: a normalized name is trimmed, 1-32 printable characters, and
/// normalizing it again changes nothing.
fn name_rule(name: &str) {
    if let Ok(n) = normalize_name(name) {
        assert_eq!(n, n.trim());
        let chars = n.chars().count();
        assert!((1..=MAX_NAME_CHARS).contains(&chars));
        assert!(!n.chars().any(char::is_control));
        assert_eq!(normalize_name(&n).as_ref(), Ok(&n));
    }
}

/// A `since` that parses is an id whose canonical form parses to the same id.
fn id_rule(since: &str) {
    if let Ok(id) = since.parse::<MsgId>() {
        let canonical = id.to_string();
        assert_eq!(canonical.parse::<MsgId>(), Ok(id));
        let json = serde_json::to_string(&id).expect("an id serialises");
        assert_eq!(serde_json::from_str::<MsgId>(&json).ok(), Some(id));
    }
}
