//! Fuzz target `bus_envelope`: what a replica reads from Redis (pub/sub channel frames,
//! history entries, control messages) through the gateway's own decoders, checking that
//! nothing panics, that decoding is stable (a decoded envelope encodes to bytes that
//! decode to the same envelope) and that the client frames made from it are JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::fuzzing::{
    decode_control, decode_envelope, presence_size, replay_frame, split_channel_frame,
};
use roomcast_protocol::MsgId;

fuzz_target!(|data: &[u8]| {
    // As a channel frame: `"<id> <envelope>"` or a bare envelope.
    if let Some((id, body)) = split_channel_frame(data) {
        if data.first() != Some(&b'{') {
            // `"<id> <envelope>"`: the body is everything after the first space.
            assert!(
                id.is_some(),
                "a frame that is not an envelope carries an id"
            );
            let space = data
                .iter()
                .position(|b| *b == b' ')
                .expect("an id frame has a space");
            assert_eq!(&body[..], &data[space + 1..]);
        } else {
            assert_eq!(&body[..], data, "an envelope is passed on whole");
        }
        envelope(&body, id.unwrap_or_default());
    }
    // As a history entry or a control message, whole.
    envelope(data, MsgId { ms: 1, seq: 0 });
    if let Ok(encoded) = decode_control(data) {
        assert_eq!(decode_control(encoded.as_bytes()).as_ref(), Ok(&encoded));
    }
});

fn envelope(payload: &[u8], id: MsgId) {
    let Ok(encoded) = decode_envelope(payload) else {
        assert!(replay_frame("r", id, payload).is_none());
        return;
    };
    // Stable: what this replica would forward decodes to the same envelope.
    assert_eq!(decode_envelope(encoded.as_bytes()).as_ref(), Ok(&encoded));
    if let Some(frame) = replay_frame("r", id, payload) {
        let v: serde_json::Value = serde_json::from_str(&frame).expect("message frame is JSON");
        assert_eq!(v["type"], "message");
        assert_eq!(v["id"], id.to_string());
        assert_eq!(v["replay"], true);
    }
    let _ = presence_size(payload);
}
