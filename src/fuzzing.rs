//! Entry points for the fuzz targets in `crates/fuzz` (hidden, not a stable API): each
//! forwards to the crate-private code that reads outside data (bus payloads, tokens,
//! configuration files) and returns plain values a target can check invariants on.
//! Nothing here is used by the gateway itself.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::auth;
use crate::bus::{Control, Envelope};
use crate::config::{AuthConfig, AuthMode, Config, ConfigError, JwtConfig};
use crate::protocol::MsgId;

/// Splits a Redis channel frame as a replica's subscriber does: the message id beside
/// the envelope (if any) and the envelope's bytes.
pub fn split_channel_frame(frame: &[u8]) -> Option<(Option<MsgId>, Vec<u8>)> {
    crate::bus::envelope::split_channel_frame(Bytes::copy_from_slice(frame))
        .map(|(id, body)| (id, body.to_vec()))
}

/// Decodes a bus envelope as a replica's receive loop does; the envelope encoded again.
pub fn decode_envelope(payload: &[u8]) -> Result<String, String> {
    Envelope::decode(payload)
        .map(|e| e.encode())
        .map_err(|e| e.to_string())
}

/// Decodes a control message (the server API's disconnect and kick); encoded again.
pub fn decode_control(payload: &[u8]) -> Result<String, String> {
    Control::decode(payload)
        .map(|c| c.encode())
        .map_err(|e| e.to_string())
}

/// The `message` frame a replica replays for a history entry (`None`: not a message,
/// or undecodable).
pub fn replay_frame(room: &str, id: MsgId, payload: &[u8]) -> Option<String> {
    crate::rooms::replay_frame(room, id, &Bytes::copy_from_slice(payload))
        .map(|(_, frame)| frame.to_string())
}

/// For a presence envelope, the room size the fan-out compares with
/// `presence.notify_max_members`.
pub fn presence_size(payload: &[u8]) -> Option<u64> {
    match Envelope::decode(payload) {
        Ok(Envelope::Presence { event, count, .. }) => {
            Some(crate::rooms::presence_size(event, count))
        }
        _ => None,
    }
}

/// What a valid connection token says (see `auth::Claims`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub sub: String,
    pub name: String,
    pub rooms: Option<Vec<String>>,
    pub publish: Option<Vec<String>>,
    pub exp: Option<u64>,
}

/// A token verifier with one HS256 secret (no JWKS: verification never waits).
pub struct Hs256Verifier(auth::Verifier);

impl Hs256Verifier {
    /// `None` if the configuration is refused (a secret under 16 bytes).
    pub fn new(secret: &str, issuer: Option<&str>, audience: Option<&str>) -> Option<Self> {
        let config = AuthConfig {
            mode: AuthMode::Jwt,
            jwt: JwtConfig {
                secret: Some(secret.to_string()),
                issuer: issuer.map(str::to_string),
                audience: audience.map(str::to_string),
                ..JwtConfig::default()
            },
            ..AuthConfig::default()
        };
        auth::Verifier::from_config(&config).ok().map(Self)
    }

    /// Verifies a connection token; the refusal's client-facing reason.
    pub fn verify(&self, token: &str) -> Result<TokenClaims, &'static str> {
        let claims = ready(self.0.verify(token))?.map_err(|e| e.reason())?;
        Ok(TokenClaims {
            sub: claims.sub,
            name: claims.name,
            rooms: claims.rooms,
            publish: claims.publish,
            exp: claims.exp,
        })
    }

    /// Verifies a room token for `room` held by user `sub`: its `exp`.
    pub fn verify_room_token(
        &self,
        token: &str,
        sub: &str,
        room: &str,
    ) -> Result<u64, &'static str> {
        ready(self.0.verify_room_token(token, sub, room))?.map_err(|e| e.reason())
    }
}

/// Whether a token's `rooms`/`publish` patterns allow `room`.
pub fn allows(patterns: Option<&[String]>, room: &str) -> bool {
    auth::allows(patterns, room)
}

/// Polls a future that never waits (verification without a JWKS) once.
fn ready<T>(future: impl Future<Output = T>) -> Result<T, &'static str> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => Ok(value),
        Poll::Pending => Err("verification waited without a JWKS"),
    }
}

/// Parses a TOML configuration file's text into the typed [`Config`] as [`Config::load`]
/// does (without the environment); not yet validated ([`Config::validate`]).
pub fn config_from_toml(text: &str) -> Result<Config, ConfigError> {
    crate::config::check_file_keys(text)?;
    Ok(config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()?
        .try_deserialize()?)
}
