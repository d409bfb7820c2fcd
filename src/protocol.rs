//! The client protocol as the gateway writes it: the shared `roomcast-protocol` crate
//! (frames, ids, rules, codes: one definition for gateway, load generator and tests),
//! plus encoding a frame once into the shared bytes a WebSocket message carries.

use axum::extract::ws::Utf8Bytes;
pub(crate) use roomcast_protocol::*;

/// Encodes a frame once into shared bytes; cloning the result is a reference-count bump.
pub(crate) trait Encode {
    fn encode(&self) -> Utf8Bytes;
}

impl Encode for ServerFrame<'_> {
    fn encode(&self) -> Utf8Bytes {
        Utf8Bytes::from(self.to_json())
    }
}

impl Encode for FrameError {
    fn encode(&self) -> Utf8Bytes {
        Utf8Bytes::from(self.to_json())
    }
}
