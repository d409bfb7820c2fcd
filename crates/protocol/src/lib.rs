//! The roomcast client protocol v1 (`docs/protocol.md`), one definition shared by the
//! gateway, the load generator and the tests.
//!
//! # Layout
//! - [`frames`]: client frames (parsed with precise error codes) and server frames
//!   (encoded once to JSON text).
//! - [`id`]: message ids, the room offsets the bus assigns (`"<ms>-<seq>"`).
//! - [`rules`]: room and display name rules, name colors.
//! - [`codes`]: the stable error codes of `error` frames and the table of close codes.
#![forbid(unsafe_code)]

pub mod codes;
pub mod frames;
pub mod id;
pub mod rules;

pub use codes::{Disconnect, DisconnectReason, ErrorCode};
pub use frames::{
    ClientFrame, FrameError, MAX_CURSOR_BYTES, MAX_MEMBERS_LIMIT, ServerFrame, parse_client_frame,
    peek_ref,
};
pub use id::{InvalidId, MsgId};
pub use rules::{User, color_for, normalize_name, validate_room};
