//! Token verification for `auth.mode = "jwt"`: who a connection is and which rooms it
//! may enter, from a signed JWT.
//!
//! A [`Verifier`] is built once from `auth.jwt.*` ([`Verifier::from_config`]): the HS256
//! secret (`secret` and/or `secret_file`), a PEM public key (`public_key_file`) and the
//! keys of a JWKS document (`jwks_url`) may all be valid at once, for key rotation.
//!
//! **The algorithm follows the key, never the token**: a secret verifies HS256 only, an
//! RSA key RS256, an EC P-256 key ES256, an Ed25519 key EdDSA (JWKS keys by `kty`/`crv`;
//! a key whose `alg` disagrees is skipped). A token's header only selects among the
//! configured keys: with a `kid`, only the JWKS key with that `kid` is tried; without
//! one, every configured key of the header's algorithm. So `alg: none` and HS/RS
//! confusion (an HS256 token "signed" with the RSA public key's bytes) find no key.
//!
//! The JWKS (`http://`, `https://` or `file://`) is fetched at start ([`Verifier::prefetch`];
//! a failure is logged, not fatal), cached, and refetched when a token names an unknown
//! `kid`, at most once per 30 s (on tokio's clock, so tests pause time). Fetches time out
//! after 5 s.
//!
//! [`AuthError`] gives clients a short reason that never echoes the token. The session
//! layer uses [`Verifier::verify`] for connection tokens, [`Verifier::verify_room_token`]
//! for the room tokens of private rooms and [`allows`] for the `rooms`/`publish`
//! patterns. [`mint_hs256`] makes development tokens (`roomcast token`).
//!
//! A room pattern is a room name, or a prefix of one followed by a single `*` as its last
//! character (`team-*`; `*` alone is every room). Nothing else is a wildcard, and no room
//! name contains `*`, so a pattern like `team-**` or `a*b` could never match: a token
//! carrying one is refused ([`AuthError::BadRoomPattern`]) instead of silently granting
//! nothing, and `roomcast token` will not mint one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{AuthConfig, JwtConfig};

/// A JWKS is refetched for an unknown `kid` at most this often.
pub(crate) const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// One JWKS fetch (connect, read) gives up after this long.
pub(crate) const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A JWKS document larger than this is refused.
const JWKS_MAX_BYTES: usize = 1 << 20;
/// The shortest HS256 key accepted (the same bound `config` applies to `auth.jwt.secret`).
const MIN_SECRET_BYTES: usize = 16;

/// A configuration that cannot be used; names the key to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {key}: {reason}")]
pub(crate) struct AuthSetupError {
    /// The configuration key, e.g. `auth.jwt.public_key_file`.
    pub(crate) key: &'static str,
    pub(crate) reason: String,
}

fn setup_error(key: &'static str, reason: impl Into<String>) -> AuthSetupError {
    AuthSetupError {
        key,
        reason: reason.into(),
    }
}

/// Why a token was refused. [`AuthError::reason`] (also its `Display`) is the short text
/// for clients; it never contains the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No token was given.
    Missing,
    /// Not a JWT (shape, base64, JSON, claim types).
    Malformed,
    /// The signature does not verify with any configured key of the token's algorithm
    /// (also: `alg: none`, an algorithm no configured key has, HS/RS confusion).
    BadSignature,
    /// The token's `kid` is not in the JWKS, even after a refetch.
    UnknownKey,
    /// `exp` is past (beyond the leeway), or missing where required (room tokens).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `iss` is not `auth.jwt.issuer` (or missing while it is set).
    WrongIssuer,
    /// `aud` does not contain `auth.jwt.audience` (or missing while it is set).
    WrongAudience,
    /// No (or an empty) `sub`.
    MissingSub,
    /// No `name`, or one that is not a valid display name.
    MissingName,
    /// A room token (or refresh) whose `sub` is another user's.
    WrongSubject,
    /// A room token for another room.
    WrongRoom,
    /// A `rooms` or `publish` pattern that is neither a room name nor a prefix ending in
    /// one `*` (see [`valid_pattern`]), e.g. `team-**`, `a*b` or `""`: it could match no
    /// room, so the token is refused rather than silently granting less than meant.
    BadRoomPattern,
}

impl AuthError {
    /// The short reason for clients.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing token",
            AuthError::Malformed => "malformed token",
            AuthError::BadSignature => "bad signature",
            AuthError::UnknownKey => "unknown signing key",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::WrongIssuer => "wrong issuer",
            AuthError::WrongAudience => "wrong audience",
            AuthError::MissingSub => "token has no sub",
            AuthError::MissingName => "token has no valid name",
            AuthError::WrongSubject => "token is for another user",
            AuthError::WrongRoom => "token is for another room",
            AuthError::BadRoomPattern => {
                "token has a malformed rooms or publish pattern (a room name, or a prefix ending in one *)"
            }
        }
    }

    /// Whether the token was refused only for being expired.
    pub(crate) fn expired(self) -> bool {
        self == AuthError::Expired
    }

    /// The bounded label of the refusal metrics: `"expired"` or `"unauthorized"`.
    pub(crate) fn metric_label(self) -> &'static str {
        if self.expired() {
            "expired"
        } else {
            "unauthorized"
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for AuthError {}

/// What a valid connection token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claims {
    /// The user id.
    pub(crate) sub: String,
    /// The display name, normalised (`roomcast_protocol::normalize_name`).
    pub(crate) name: String,
    /// Room patterns the user may join; `None` = all rooms (see [`allows`]).
    pub(crate) rooms: Option<Vec<String>>,
    /// Room patterns the user may send to; `None` = every joined room.
    pub(crate) publish: Option<Vec<String>>,
    /// Expiry (Unix seconds), when the token has one.
    pub(crate) exp: Option<u64>,
}

/// The claims as they arrive: everything optional, checked after the signature.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
    /// NumericDate may have a fraction.
    #[serde(default)]
    exp: Option<f64>,
    /// Room tokens only.
    #[serde(default)]
    room: Option<String>,
}

/// Whether `pattern` is a well-formed room pattern: a room name
/// ([`roomcast_protocol::rules::is_valid_room`]), or a prefix of room-name characters (possibly
/// empty) followed by one `*` as its last character. [`Verifier::verify`] refuses a token
/// with any other pattern ([`AuthError::BadRoomPattern`]).
pub(crate) fn valid_pattern(pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => roomcast_protocol::rules::is_valid_room(prefix),
        None => roomcast_protocol::rules::is_valid_room(pattern),
    }
}

/// Whether `room` matches one of `patterns` (a room name, or a prefix ending in `*`);
/// absent patterns allow every room. A malformed pattern (see [`valid_pattern`]; verified
/// tokens have none) matches no valid room.
pub(crate) fn allows(patterns: Option<&[String]>, room: &str) -> bool {
    let Some(patterns) = patterns else {
        return true;
    };
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => p == room,
    })
}

/// One verification key and the one algorithm it verifies.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Checks tokens against the configured keys; share it behind an `Arc`.
pub(crate) struct Verifier {
    /// The secret(s) and the PEM key, fixed at start.
    keys: Vec<Key>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    leeway: u64,
}

impl Verifier {
    /// Builds the verifier: reads `secret_file` (trailing whitespace trimmed) and
    /// `public_key_file` now, checks `jwks_url`'s scheme. The JWKS itself is fetched by
    /// [`Verifier::prefetch`] (or lazily by the first token). Errors name the key.
    pub(crate) fn from_config(config: &AuthConfig) -> Result<Verifier, AuthSetupError> {
        let jwt = &config.jwt;
        let mut keys = Vec::new();
        if let Some(secret) = &jwt.secret {
            keys.push(secret_key("auth.jwt.secret", secret.as_bytes())?);
        }
        if let Some(path) = &jwt.secret_file {
            let secret = read_secret_file(path)?;
            keys.push(secret_key("auth.jwt.secret_file", &secret)?);
        }
        if let Some(path) = &jwt.public_key_file {
            let pem = std::fs::read(path).map_err(|e| {
                setup_error(
                    "auth.jwt.public_key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let key = pem_key(&pem).map_err(|e| {
                setup_error(
                    "auth.jwt.public_key_file",
                    format!("{}: {e}", path.display()),
                )
            })?;
            keys.push(key);
        }
        let jwks = match &jwt.jwks_url {
            Some(url) => Some(Jwks::new(url)?),
            None => None,
        };
        Ok(Verifier {
            keys,
            jwks,
            issuer: jwt.issuer.clone(),
            audience: jwt.audience.clone(),
            leeway: jwt.leeway.as_secs(),
        })
    }

    /// The start-up JWKS fetch (nothing without `jwks_url`). A failure is logged and
    /// retried lazily when a token needs the JWKS, at most once per 30 s.
    pub(crate) async fn prefetch(&self) {
        if let Some(jwks) = &self.jwks {
            jwks.refresh().await;
        }
    }

    /// Verifies a connection token: signature, `exp`/`nbf` (with the leeway), `iss` and
    /// `aud` when configured, a non-empty `sub`, a valid `name` and well-formed `rooms`
    /// and `publish` patterns ([`valid_pattern`]).
    pub(crate) async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let raw = self.verify_raw(token, false).await?;
        let sub = raw
            .sub
            .filter(|s| !s.trim().is_empty())
            .ok_or(AuthError::MissingSub)?;
        let name = raw
            .name
            .as_deref()
            .and_then(|n| roomcast_protocol::normalize_name(n).ok())
            .ok_or(AuthError::MissingName)?;
        let mut patterns = raw.rooms.iter().chain(&raw.publish).flatten();
        if !patterns.all(|p| valid_pattern(p)) {
            return Err(AuthError::BadRoomPattern);
        }
        Ok(Claims {
            sub,
            name,
            rooms: raw.rooms,
            publish: raw.publish,
            exp: raw.exp.map(unix_secs),
        })
    }

    /// Verifies a room token for `room`, held by the connection of user `sub`: the same
    /// keys and checks as [`Verifier::verify`], plus `sub` equal to `sub`, `room` equal to
    /// `room` and a required `exp`, which is returned (Unix seconds).
    pub(crate) async fn verify_room_token(
        &self,
        token: &str,
        sub: &str,
        room: &str,
    ) -> Result<u64, AuthError> {
        let raw = self.verify_raw(token, true).await?;
        match raw.sub.as_deref() {
            None | Some("") => return Err(AuthError::MissingSub),
            Some(s) if s != sub => return Err(AuthError::WrongSubject),
            Some(_) => {}
        }
        if raw.room.as_deref() != Some(room) {
            return Err(AuthError::WrongRoom);
        }
        raw.exp.map(unix_secs).ok_or(AuthError::Expired)
    }

    /// Signature and standard claims; the caller checks its own claims.
    async fn verify_raw(&self, token: &str, require_exp: bool) -> Result<RawClaims, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let alg = header_alg(token)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        debug_assert_eq!(header.alg, alg);
        if let Some(kid) = &header.kid {
            // A `kid` names one JWKS key; nothing else is tried.
            let Some(jwks) = &self.jwks else {
                return Err(AuthError::UnknownKey);
            };
            let find = |set: &[Key]| set.iter().position(|k| k.kid.as_deref() == Some(kid));
            let mut set = jwks.current();
            if find(&set).is_none() {
                jwks.refresh().await;
                set = jwks.current();
            }
            let key = &set[find(&set).ok_or(AuthError::UnknownKey)?];
            if key.alg != alg {
                return Err(AuthError::BadSignature);
            }
            return self.try_keys(token, [key], require_exp);
        }
        let jwks_keys = match &self.jwks {
            Some(jwks) => {
                let mut set = jwks.current();
                let has_alg = |set: &[Key]| set.iter().any(|k| k.alg == alg);
                if !has_alg(&set) && !self.keys.iter().any(|k| k.alg == alg) {
                    // Perhaps the start-up fetch failed or the issuer added a key type.
                    jwks.refresh().await;
                    set = jwks.current();
                }
                set
            }
            None => Arc::new(Vec::new()),
        };
        let candidates = self.keys.iter().chain(jwks_keys.iter());
        self.try_keys(token, candidates.filter(|k| k.alg == alg), require_exp)
    }

    fn try_keys<'k>(
        &self,
        token: &str,
        keys: impl IntoIterator<Item = &'k Key>,
        require_exp: bool,
    ) -> Result<RawClaims, AuthError> {
        for key in keys {
            match jsonwebtoken::decode::<RawClaims>(
                token,
                &key.key,
                &self.validation(key.alg, require_exp),
            ) {
                Ok(data) => return Ok(data.claims),
                // Another key may have signed it (rotation).
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                // The signature verified: the claims are wrong.
                Err(e) => return Err(claims_error(e.kind())),
            }
        }
        Err(AuthError::BadSignature)
    }

    fn validation(&self, alg: Algorithm, require_exp: bool) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.required_spec_claims.clear();
        if require_exp {
            v.required_spec_claims.insert("exp".into());
        }
        if let Some(issuer) = &self.issuer {
            v.set_issuer(&[issuer]);
            v.required_spec_claims.insert("iss".into());
        }
        match &self.audience {
            Some(audience) => {
                v.set_audience(&[audience]);
                v.required_spec_claims.insert("aud".into());
            }
            None => v.validate_aud = false,
        }
        v
    }
}

fn claims_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "iss" => AuthError::WrongIssuer,
            "aud" => AuthError::WrongAudience,
            "exp" => AuthError::Expired,
            _ => AuthError::Malformed,
        },
        ErrorKind::InvalidClaimFormat(c) => match c.as_str() {
            "iss" => AuthError::WrongIssuer,
            "aud" => AuthError::WrongAudience,
            _ => AuthError::Malformed,
        },
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => AuthError::BadSignature,
        _ => AuthError::Malformed,
    }
}

/// The header's `alg`, read before anything else: `none` and algorithms no key type
/// here has are refused as [`AuthError::BadSignature`]; a token that is not three
/// base64url parts with a JSON header is [`AuthError::Malformed`].
fn header_alg(token: &str) -> Result<Algorithm, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    #[derive(Deserialize)]
    struct Alg {
        alg: String,
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed)?;
    let Alg { alg } = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    match alg.as_str() {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        _ => Err(AuthError::BadSignature),
    }
}

fn unix_secs(t: f64) -> u64 {
    if t.is_finite() && t > 0.0 {
        t as u64
    } else {
        0
    }
}

fn read_secret_file(path: &std::path::Path) -> Result<Vec<u8>, AuthSetupError> {
    let mut bytes = std::fs::read(path).map_err(|e| {
        setup_error(
            "auth.jwt.secret_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    while bytes.last().is_some_and(u8::is_ascii_whitespace) {
        bytes.pop();
    }
    Ok(bytes)
}

fn secret_key(config_key: &'static str, secret: &[u8]) -> Result<Key, AuthSetupError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(setup_error(
            config_key,
            format!("must be at least {MIN_SECRET_BYTES} bytes (it is an HS256 key)"),
        ));
    }
    let key =
        DecodingKey::from_secret(secret).map_err(|e| setup_error(config_key, e.to_string()))?;
    Ok(Key {
        kid: None,
        alg: Algorithm::HS256,
        key,
    })
}

/// A PEM public key and the algorithm its type fixes.
fn pem_key(pem: &[u8]) -> Result<Key, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file".to_string())?;
    let label = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .ok_or("not a PEM file (no -----BEGIN line)")?;
    if label.contains("PRIVATE") {
        return Err("a private key; give the public key (openssl pkey -pubout)".into());
    }
    let (alg, key) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        (Algorithm::RS256, key)
    } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        // The uncompressed (65 bytes) or compressed (33) point of a P-256 key.
        let len = key.try_get_as_bytes().map(<[u8]>::len).unwrap_or(0);
        if len != 65 && len != 33 {
            return Err("an EC key that is not P-256 (only ES256 is supported)".into());
        }
        (Algorithm::ES256, key)
    } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        (Algorithm::EdDSA, key)
    } else {
        return Err("not an RSA, EC P-256 or Ed25519 public key in PEM".into());
    };
    Ok(Key {
        kid: None,
        alg,
        key,
    })
}

/// A JWK's key and the algorithm its `kty`/`crv` fixes; `alg`, if present, must agree.
fn jwk_key(jwk: &Jwk) -> Result<Key, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key (use = enc)".into());
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if matches!(p.curve, EllipticCurve::P256) => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(p) if matches!(p.curve, EllipticCurve::Ed25519) => {
            Algorithm::EdDSA
        }
        _ => return Err("unsupported kty/crv (RSA, EC P-256 and OKP Ed25519 are)".into()),
    };
    let agrees = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => alg == Algorithm::EdDSA,
        Some(_) => false,
    };
    if !agrees {
        return Err(format!("its alg does not match its key type ({alg:?})"));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

/// The usable keys of a JWKS document; keys that cannot be used are skipped (logged).
fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for value in set.keys {
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let parsed = serde_json::from_value::<Jwk>(value)
            .map_err(|e| e.to_string())
            .and_then(|jwk| jwk_key(&jwk));
        match parsed {
            Ok(key) => keys.push(key),
            Err(why) => tracing::warn!(kid = kid.as_deref(), "JWKS key skipped: {why}"),
        }
    }
    Ok(keys)
}

enum JwksSource {
    File(PathBuf),
    Http {
        url: String,
        client: reqwest::Client,
    },
}

/// The cached JWKS and its refetch bound.
struct Jwks {
    source: JwksSource,
    keys: RwLock<Arc<Vec<Key>>>,
    /// When the last fetch was attempted; held across a fetch, so concurrent tokens
    /// with a new `kid` share one fetch.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
    /// Fetch attempts so far.
    fetches: AtomicU64,
}

impl Jwks {
    fn new(url: &str) -> Result<Jwks, AuthSetupError> {
        const KEY: &str = "auth.jwt.jwks_url";
        let source = if let Some(rest) = url.strip_prefix("file://") {
            // file:///abs/path (empty host) or file://localhost/abs/path.
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(setup_error(
                    KEY,
                    "a file:// URL needs an absolute path (file:///...)",
                ));
            }
            JwksSource::File(PathBuf::from(path))
        } else if url.starts_with("http://") || url.starts_with("https://") {
            JwksSource::Http {
                url: url.to_owned(),
                client: http_client().map_err(|e| setup_error(KEY, e))?,
            }
        } else {
            return Err(setup_error(
                KEY,
                "must be an http://, https:// or file:// URL",
            ));
        };
        Ok(Jwks {
            source,
            keys: RwLock::new(Arc::new(Vec::new())),
            last_attempt: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
        })
    }

    fn current(&self) -> Arc<Vec<Key>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Fetches the document again unless the last attempt was less than 30 s ago.
    async fn refresh(&self) {
        let mut last = self.last_attempt.lock().await;
        if last.is_some_and(|at| at.elapsed() < JWKS_REFETCH_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch().await.and_then(|body| parse_jwks(&body)) {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "JWKS loaded");
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
            }
            Err(e) => tracing::warn!(
                "cannot load the JWKS (auth.jwt.jwks_url; retried on demand at most every {}s): {e}",
                JWKS_REFETCH_INTERVAL.as_secs()
            ),
        }
    }

    async fn fetch(&self) -> Result<Vec<u8>, String> {
        match &self.source {
            JwksSource::File(path) => {
                let body = tokio::time::timeout(JWKS_FETCH_TIMEOUT, tokio::fs::read(path))
                    .await
                    .map_err(|_| format!("reading {} timed out", path.display()))?
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if body.len() > JWKS_MAX_BYTES {
                    return Err(format!("larger than {JWKS_MAX_BYTES} bytes"));
                }
                Ok(body)
            }
            JwksSource::Http { url, client } => {
                let response = client
                    .get(url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| e.without_url().to_string())?;
                if response
                    .content_length()
                    .is_some_and(|n| n > JWKS_MAX_BYTES as u64)
                {
                    return Err(format!("larger than {JWKS_MAX_BYTES} bytes"));
                }
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| e.without_url().to_string())?;
                if body.len() > JWKS_MAX_BYTES {
                    return Err(format!("larger than {JWKS_MAX_BYTES} bytes"));
                }
                Ok(body.to_vec())
            }
        }
    }
}

/// The JWKS client: rustls with the ring provider and the platform's roots, 5 s timeout.
fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(crate::tls::client_config()?)
        .timeout(JWKS_FETCH_TIMEOUT)
        .connect_timeout(JWKS_FETCH_TIMEOUT)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// What `roomcast token` puts in a development token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The user id (`sub`).
    pub sub: String,
    /// The display name (`name`).
    pub name: String,
    /// Room patterns the user may join (`rooms`); `None` = all.
    pub rooms: Option<Vec<String>>,
    /// Room patterns the user may send to (`publish`); `None` = every joined room.
    pub publish: Option<Vec<String>>,
    /// Lifetime: `exp` = now + ttl.
    pub ttl: Duration,
}

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rooms: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    publish: Option<&'a [String]>,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Mints an HS256 token with the configured secret (`auth.jwt.secret`, else
/// `auth.jwt.secret_file`), with `iss`/`aud` when configured, so this gateway accepts it.
/// Fails naming `auth.jwt.secret` when no secret is configured.
pub fn mint_hs256(jwt: &JwtConfig, request: &TokenRequest) -> anyhow::Result<String> {
    let secret = match (&jwt.secret, &jwt.secret_file) {
        (Some(secret), _) => secret.as_bytes().to_vec(),
        (None, Some(path)) => read_secret_file(path)?,
        (None, None) => anyhow::bail!(
            "no HS256 secret configured: set auth.jwt.secret (ROOMCAST_AUTH__JWT__SECRET) or auth.jwt.secret_file"
        ),
    };
    if secret.len() < MIN_SECRET_BYTES {
        anyhow::bail!(
            "auth.jwt.secret: must be at least {MIN_SECRET_BYTES} bytes (it is an HS256 key)"
        );
    }
    if request.sub.trim().is_empty() {
        anyhow::bail!("--sub must not be empty");
    }
    let name = roomcast_protocol::normalize_name(&request.name)
        .map_err(|_| anyhow::anyhow!("--name: a display name is 1-32 printable characters"))?;
    for (flag, patterns) in [("--rooms", &request.rooms), ("--publish", &request.publish)] {
        if let Some(bad) = patterns.iter().flatten().find(|p| !valid_pattern(p)) {
            anyhow::bail!(
                "{flag}: {bad:?} is not a room pattern (a room name, or a prefix ending in one *)"
            );
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = MintClaims {
        sub: &request.sub,
        name: &name,
        rooms: request.rooms.as_deref(),
        publish: request.publish.as_deref(),
        iat: now,
        exp: now.saturating_add(request.ttl.as_secs().max(1)),
        iss: jwt.issuer.as_deref(),
        aud: jwt.audience.as_deref(),
    };
    let key = EncodingKey::from_secret(&secret)?;
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &key,
    )?)
}

#[cfg(test)]
mod tests {
    //! Tokens here are made by `jwt-simple`, a JWT library independent of the one that
    //! verifies, with the test-only keys of `tests/keys/` (made once with `openssl`).
    use super::*;
    use crate::config::AuthMode;
    use jwt_simple::prelude::{
        self as js, ECDSAP256KeyPairLike, EdDSAKeyPairLike, MACLike, RSAKeyPairLike,
    };

    const SECRET: &str = "a-secret-of-32-bytes-for-hs256!!";
    const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    const RSA_PRIVATE: &str = include_str!("../tests/keys/rsa_private.pem");
    const RSA2_PRIVATE: &str = include_str!("../tests/keys/rsa2_private.pem");
    const RSA_PUBLIC: &str = include_str!("../tests/keys/rsa_public.pem");
    const EC_PRIVATE: &str = include_str!("../tests/keys/ec_private.pem");
    const ED_PRIVATE: &str = include_str!("../tests/keys/ed25519_private.pem");

    #[derive(Serialize, Deserialize, Default)]
    struct Extra {
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        rooms: Option<Vec<String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        publish: Option<Vec<String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<String>,
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// Claims of user `u1` named "Alice", valid for an hour.
    fn claims() -> js::JWTClaims<Extra> {
        js::Claims::with_custom_claims(
            Extra {
                name: Some("  Alice ".into()),
                rooms: Some(vec!["lobby".into(), "team-*".into()]),
                publish: None,
                room: None,
            },
            js::Duration::from_hours(1),
        )
        .with_subject("u1")
    }

    fn hs(secret: &[u8], c: js::JWTClaims<Extra>) -> String {
        js::HS256Key::from_bytes(secret).authenticate(c).unwrap()
    }
    fn rs(pem: &str, c: js::JWTClaims<Extra>) -> String {
        js::RS256KeyPair::from_pem(pem).unwrap().sign(c).unwrap()
    }
    fn es(c: js::JWTClaims<Extra>) -> String {
        js::ES256KeyPair::from_pem(EC_PRIVATE)
            .unwrap()
            .sign(c)
            .unwrap()
    }
    fn ed(c: js::JWTClaims<Extra>) -> String {
        js::Ed25519KeyPair::from_pem(ED_PRIVATE)
            .unwrap()
            .sign(c)
            .unwrap()
    }

    fn auth(jwt: JwtConfig) -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Jwt,
            jwt,
            ..AuthConfig::default()
        }
    }
    fn with_secret() -> JwtConfig {
        JwtConfig {
            secret: Some(SECRET.into()),
            ..JwtConfig::default()
        }
    }
    fn with_pem(file: &str) -> JwtConfig {
        JwtConfig {
            public_key_file: Some(PathBuf::from(format!("{KEYS}/{file}"))),
            ..JwtConfig::default()
        }
    }
    fn verifier(jwt: JwtConfig) -> Verifier {
        Verifier::from_config(&auth(jwt)).expect("valid auth config")
    }

    #[tokio::test]
    async fn valid_tokens_of_each_key_type_are_accepted() {
        let v = verifier(with_secret());
        let c = v.verify(&hs(SECRET.as_bytes(), claims())).await.unwrap();
        assert_eq!(c.sub, "u1");
        assert_eq!(c.name, "Alice", "normalised");
        assert_eq!(
            c.rooms.as_deref(),
            Some(&["lobby".to_string(), "team-*".into()][..])
        );
        assert_eq!(c.publish, None);
        assert!(c.exp.unwrap() > now() + 3500);

        let v = verifier(with_pem("rsa_public.pem"));
        assert_eq!(
            v.verify(&rs(RSA_PRIVATE, claims())).await.unwrap().sub,
            "u1"
        );
        let v = verifier(with_pem("ec_public.pem"));
        assert_eq!(v.verify(&es(claims())).await.unwrap().sub, "u1");
        let v = verifier(with_pem("ed25519_public.pem"));
        assert_eq!(v.verify(&ed(claims())).await.unwrap().sub, "u1");
    }

    #[tokio::test]
    async fn several_keys_are_valid_at_once() {
        let dir = tempdir();
        let file = dir.join("secret");
        std::fs::write(&file, "another-secret-of-32-bytes-here!\n\n").unwrap();
        let v = verifier(
            JwtConfig {
                secret_file: Some(file),
                ..with_pem("rsa_public.pem")
            }
            .with_secret_too(),
        );
        assert!(v.verify(&hs(SECRET.as_bytes(), claims())).await.is_ok());
        assert!(
            v.verify(&hs(b"another-secret-of-32-bytes-here!", claims()))
                .await
                .is_ok(),
            "trailing whitespace of secret_file trimmed"
        );
        assert!(v.verify(&rs(RSA_PRIVATE, claims())).await.is_ok());
        assert_eq!(
            v.verify(&es(claims())).await,
            Err(AuthError::BadSignature),
            "no EC key"
        );
    }

    trait SecretToo {
        fn with_secret_too(self) -> Self;
    }
    impl SecretToo for JwtConfig {
        fn with_secret_too(mut self) -> Self {
            self.secret = Some(SECRET.into());
            self
        }
    }

    #[tokio::test]
    async fn wrong_signatures_are_refused() {
        let v = verifier(with_pem("rsa_public.pem").with_secret_too());
        assert_eq!(
            v.verify(&rs(RSA2_PRIVATE, claims())).await,
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify(&hs(b"some-other-secret-of-32-bytes!!!", claims()))
                .await,
            Err(AuthError::BadSignature)
        );
        // A valid token with its signature changed. The first character of the signature
        // is changed, not the last: the last base64url character of a 256-byte signature
        // carries only 2 bits, and most substitutions there are not canonical base64
        // (refused as malformed, which made this test flaky).
        let token = rs(RSA_PRIVATE, claims());
        let at = token.rfind('.').unwrap() + 1;
        let first = &token[at..at + 1];
        let changed = if first == "A" { "B" } else { "A" };
        let token = format!("{}{changed}{}", &token[..at], &token[at + 1..]);
        assert_eq!(v.verify(&token).await, Err(AuthError::BadSignature));
    }

    fn unsigned(alg: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let payload = format!(r#"{{"sub":"u1","name":"Alice","exp":{}}}"#, now() + 600);
        format!(
            "{}.{}.",
            b64(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)),
            b64(&payload)
        )
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let v = verifier(with_pem("rsa_public.pem").with_secret_too());
        for alg in ["none", "None", "NONE"] {
            assert_eq!(
                v.verify(&unsigned(alg)).await,
                Err(AuthError::BadSignature),
                "{alg}"
            );
        }
        assert_eq!(
            v.verify(&unsigned("HS512")).await,
            Err(AuthError::BadSignature)
        );
    }

    #[tokio::test]
    async fn hs_rs_confusion_is_refused() {
        // An HS256 token whose HMAC key is the RSA public key's PEM text.
        let forged = hs(RSA_PUBLIC.as_bytes(), claims());
        let v = verifier(with_pem("rsa_public.pem"));
        assert_eq!(v.verify(&forged).await, Err(AuthError::BadSignature));
        let v = verifier(with_pem("rsa_public.pem").with_secret_too());
        assert_eq!(v.verify(&forged).await, Err(AuthError::BadSignature));
    }

    #[tokio::test]
    async fn time_claims_are_checked_with_the_leeway() {
        let v = verifier(with_secret()); // leeway 30 s
        let mut c = claims();
        c.expires_at = Some(js::UnixTimeStamp::from_secs(now() - 120));
        assert_eq!(
            v.verify(&hs(SECRET.as_bytes(), c)).await,
            Err(AuthError::Expired)
        );
        let mut c = claims();
        c.expires_at = Some(js::UnixTimeStamp::from_secs(now() - 5));
        assert!(
            v.verify(&hs(SECRET.as_bytes(), c)).await.is_ok(),
            "within the leeway"
        );

        let mut c = claims();
        c.invalid_before = Some(js::UnixTimeStamp::from_secs(now() + 120));
        assert_eq!(
            v.verify(&hs(SECRET.as_bytes(), c)).await,
            Err(AuthError::NotYetValid)
        );
        let mut c = claims();
        c.invalid_before = Some(js::UnixTimeStamp::from_secs(now() + 5));
        assert!(
            v.verify(&hs(SECRET.as_bytes(), c)).await.is_ok(),
            "within the leeway"
        );

        let mut c = claims();
        c.expires_at = None;
        assert!(
            v.verify(&hs(SECRET.as_bytes(), c))
                .await
                .unwrap()
                .exp
                .is_none(),
            "exp optional"
        );
    }

    #[tokio::test]
    async fn issuer_and_audience_are_checked_when_configured() {
        let v = verifier(JwtConfig {
            issuer: Some("https://issuer.example".into()),
            audience: Some("roomcast".into()),
            ..with_secret()
        });
        let ok = claims()
            .with_issuer("https://issuer.example")
            .with_audience("roomcast");
        assert!(v.verify(&hs(SECRET.as_bytes(), ok)).await.is_ok());
        let c = claims()
            .with_issuer("https://evil.example")
            .with_audience("roomcast");
        assert_eq!(
            v.verify(&hs(SECRET.as_bytes(), c)).await,
            Err(AuthError::WrongIssuer)
        );
        let c = claims().with_audience("roomcast");
        assert_eq!(
            v.verify(&hs(SECRET.as_bytes(), c)).await,
            Err(AuthError::WrongIssuer),
            "missing iss"
        );
        let c = claims()
            .with_issuer("https://issuer.example")
            .with_audience("other");
        assert_eq!(
            v.verify(&hs(SECRET.as_bytes(), c)).await,
            Err(AuthError::WrongAudience)
        );
        let c = claims().with_issuer("https://issuer.example");
        assert_eq!(
            v.verify(&hs(SECRET.as_bytes(), c)).await,
            Err(AuthError::WrongAudience),
            "missing aud"
        );
        // Not configured: not checked.
        let v = verifier(with_secret());
        let c = claims().with_issuer("anyone").with_audience("anything");
        assert!(v.verify(&hs(SECRET.as_bytes(), c)).await.is_ok());
    }

    #[tokio::test]
    async fn sub_and_name_are_required() {
        let v = verifier(with_secret());
        let mut c = claims();
        c.subject = None;
        assert_eq!(
            v.verify(&hs(SECRET.as_bytes(), c)).await,
            Err(AuthError::MissingSub)
        );
        let c = claims().with_subject("");
        assert_eq!(
            v.verify(&hs(SECRET.as_bytes(), c)).await,
            Err(AuthError::MissingSub)
        );
        for name in [None, Some("   "), Some("x".repeat(40).as_str())] {
            let mut c = claims();
            c.custom.name = name.map(str::to_owned);
            assert_eq!(
                v.verify(&hs(SECRET.as_bytes(), c)).await,
                Err(AuthError::MissingName)
            );
        }
    }

    #[tokio::test]
    async fn missing_and_malformed_tokens() {
        let v = verifier(with_secret());
        assert_eq!(v.verify("").await, Err(AuthError::Missing));
        assert_eq!(v.verify("  ").await, Err(AuthError::Missing));
        for bad in ["abc", "a.b", "a.b.c", "a.b.c.d", "!!.??.**"] {
            assert_eq!(v.verify(bad).await, Err(AuthError::Malformed), "{bad}");
        }
        // A kid with no JWKS configured names no key.
        let token = js::HS256Key::from_bytes(SECRET.as_bytes())
            .with_key_id("k1")
            .authenticate(claims())
            .unwrap();
        assert_eq!(v.verify(&token).await, Err(AuthError::UnknownKey));
    }

    #[test]
    fn reasons_never_echo_the_token_and_labels_are_bounded() {
        assert_eq!(AuthError::Expired.metric_label(), "expired");
        assert!(AuthError::Expired.expired());
        for e in [
            AuthError::Missing,
            AuthError::Malformed,
            AuthError::BadSignature,
            AuthError::UnknownKey,
            AuthError::NotYetValid,
            AuthError::WrongIssuer,
            AuthError::WrongAudience,
            AuthError::MissingSub,
            AuthError::MissingName,
            AuthError::WrongSubject,
            AuthError::WrongRoom,
            AuthError::BadRoomPattern,
        ] {
            assert_eq!(e.metric_label(), "unauthorized");
            assert!(!e.expired());
            assert_eq!(e.to_string(), e.reason());
        }
    }

    fn tempdir() -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "roomcast-auth-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A public JWK with `kid` (and optionally another `alg`).
    fn jwk(public_jwk: String, kid: &str) -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_str(&public_jwk).unwrap();
        v["kid"] = kid.into();
        v
    }
    fn rsa_jwk(kid: &str) -> serde_json::Value {
        let kp = js::RS256KeyPair::from_pem(RSA_PRIVATE).unwrap();
        jwk(kp.public_key().to_jwk(), kid)
    }
    fn ed_jwk(kid: &str) -> serde_json::Value {
        let kp = js::Ed25519KeyPair::from_pem(ED_PRIVATE).unwrap();
        jwk(kp.public_key().to_jwk(), kid)
    }
    fn ec_jwk(kid: &str) -> serde_json::Value {
        let kp = js::ES256KeyPair::from_pem(EC_PRIVATE).unwrap();
        jwk(kp.public_key().to_jwk(), kid)
    }
    fn write_jwks(path: &std::path::Path, keys: Vec<serde_json::Value>) {
        std::fs::write(path, serde_json::json!({ "keys": keys }).to_string()).unwrap();
    }
    fn with_kid_rs(kid: &str) -> String {
        js::RS256KeyPair::from_pem(RSA_PRIVATE)
            .unwrap()
            .with_key_id(kid)
            .sign(claims())
            .unwrap()
    }
    fn with_kid_ed(kid: &str) -> String {
        js::Ed25519KeyPair::from_pem(ED_PRIVATE)
            .unwrap()
            .with_key_id(kid)
            .sign(claims())
            .unwrap()
    }
    fn with_kid_es(kid: &str) -> String {
        js::ES256KeyPair::from_pem(EC_PRIVATE)
            .unwrap()
            .with_key_id(kid)
            .sign(claims())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn jwks_file_rotation_refetches_at_most_every_30s() {
        let dir = tempdir();
        let file = dir.join("jwks.json");
        write_jwks(&file, vec![rsa_jwk("k1")]);
        let v = verifier(JwtConfig {
            jwks_url: Some(format!("file://{}", file.display())),
            ..JwtConfig::default()
        });
        let fetches = || v.jwks.as_ref().unwrap().fetches.load(Ordering::Relaxed);
        v.prefetch().await;
        assert_eq!(fetches(), 1);
        assert_eq!(v.verify(&with_kid_rs("k1")).await.unwrap().sub, "u1");
        // Without a kid, every JWKS key of the token's algorithm is tried.
        assert!(v.verify(&rs(RSA_PRIVATE, claims())).await.is_ok());

        // A new kid before the file changes: unknown; no refetch within 30 s of the last.
        assert_eq!(
            v.verify(&with_kid_ed("k2")).await,
            Err(AuthError::UnknownKey)
        );
        write_jwks(&file, vec![rsa_jwk("k1"), ed_jwk("k2")]);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            v.verify(&with_kid_ed("k2")).await,
            Err(AuthError::UnknownKey)
        );
        assert_eq!(
            v.verify(&with_kid_ed("k9")).await,
            Err(AuthError::UnknownKey)
        );
        assert_eq!(fetches(), 1, "refetches at most once per 30 s");

        tokio::time::advance(Duration::from_secs(21)).await;
        assert_eq!(
            v.verify(&with_kid_ed("k2")).await.unwrap().sub,
            "u1",
            "accepted after the refetch"
        );
        assert_eq!(fetches(), 2);
        // Known kids need no fetch; unknown ones wait for the bound again.
        assert!(v.verify(&with_kid_rs("k1")).await.is_ok());
        assert_eq!(
            v.verify(&with_kid_ed("k3")).await,
            Err(AuthError::UnknownKey)
        );
        assert_eq!(fetches(), 2);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(
            v.verify(&with_kid_ed("k3")).await,
            Err(AuthError::UnknownKey)
        );
        assert_eq!(fetches(), 3);

        // A kid names one key, and that key's type fixes the algorithm.
        assert_eq!(
            v.verify(&with_kid_es("k1")).await,
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            v.verify(&with_kid_rs("k2")).await,
            Err(AuthError::BadSignature)
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test(start_paused = true)]
    async fn jwks_failure_at_start_is_not_fatal_and_is_retried_lazily() {
        let dir = tempdir();
        let file = dir.join("jwks.json");
        let v = verifier(JwtConfig {
            jwks_url: Some(format!("file://{}", file.display())),
            ..JwtConfig::default()
        });
        v.prefetch().await; // the file does not exist yet
        write_jwks(&file, vec![ec_jwk("e1")]);
        assert_eq!(
            v.verify(&with_kid_es("e1")).await,
            Err(AuthError::UnknownKey)
        );
        tokio::time::advance(JWKS_REFETCH_INTERVAL).await;
        assert!(v.verify(&with_kid_es("e1")).await.is_ok());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn jwks_keys_follow_their_type_and_a_disagreeing_alg_is_skipped() {
        let mut wrong_alg = rsa_jwk("r-hs");
        wrong_alg["alg"] = "HS256".into();
        let mut enc = rsa_jwk("r-enc");
        enc["use"] = "enc".into();
        let oct = serde_json::json!({"kty": "oct", "kid": "o", "k": "c2VjcmV0"});
        let body = serde_json::json!({
            "keys": [rsa_jwk("r"), ec_jwk("e"), ed_jwk("d"), wrong_alg, enc, oct]
        });
        let keys = parse_jwks(body.to_string().as_bytes()).unwrap();
        let got: Vec<_> = keys
            .iter()
            .map(|k| (k.kid.clone().unwrap(), k.alg))
            .collect();
        assert_eq!(
            got,
            [
                ("r".to_string(), Algorithm::RS256),
                ("e".into(), Algorithm::ES256),
                ("d".into(), Algorithm::EdDSA)
            ]
        );
        assert!(parse_jwks(b"{}").is_err());
    }

    #[tokio::test]
    async fn jwks_over_http() {
        let body = serde_json::json!({ "keys": [rsa_jwk("h1")] }).to_string();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || async move { body }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let v = verifier(JwtConfig {
            jwks_url: Some(format!("http://{addr}/jwks.json")),
            ..JwtConfig::default()
        });
        // No prefetch: the first token fetches.
        assert!(v.verify(&with_kid_rs("h1")).await.is_ok());
        server.abort();
    }

    #[tokio::test]
    async fn room_tokens_grant_their_room_to_their_sub_only() {
        let v = verifier(with_pem("rsa_public.pem"));
        let room_token = |sub: &str, room: &str, exp: Option<u64>| {
            let mut c = claims().with_subject(sub);
            c.custom = Extra {
                room: Some(room.into()),
                ..Extra::default()
            };
            c.expires_at = exp.map(js::UnixTimeStamp::from_secs);
            rs(RSA_PRIVATE, c)
        };
        let exp = now() + 600;
        let token = room_token("u1", "secret-room", Some(exp));
        assert_eq!(
            v.verify_room_token(&token, "u1", "secret-room").await,
            Ok(exp)
        );
        assert_eq!(
            v.verify_room_token(&token, "u1", "other-room").await,
            Err(AuthError::WrongRoom)
        );
        assert_eq!(
            v.verify_room_token(&token, "u2", "secret-room").await,
            Err(AuthError::WrongSubject)
        );
        let no_exp = room_token("u1", "secret-room", None);
        assert_eq!(
            v.verify_room_token(&no_exp, "u1", "secret-room").await,
            Err(AuthError::Expired),
            "exp is required"
        );
        let old = room_token("u1", "secret-room", Some(now() - 600));
        assert_eq!(
            v.verify_room_token(&old, "u1", "secret-room").await,
            Err(AuthError::Expired)
        );
        let forged = rs(RSA2_PRIVATE, {
            let mut c = claims();
            c.custom.room = Some("secret-room".into());
            c
        });
        assert_eq!(
            v.verify_room_token(&forged, "u1", "secret-room").await,
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn room_patterns() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(allows(None, "anything"));
        let pats = p(&["lobby", "team-*"]);
        assert!(allows(Some(&pats), "lobby"));
        assert!(allows(Some(&pats), "team-a"));
        assert!(allows(Some(&pats), "team-"));
        assert!(!allows(Some(&pats), "lobby2"));
        assert!(!allows(Some(&pats), "team"));
        assert!(!allows(Some(&pats), "other"));
        assert!(!allows(Some(&[]), "lobby"), "an empty list allows nothing");
        assert!(allows(Some(&p(&["*"])), "x"));
    }

    #[test]
    fn a_pattern_is_a_room_name_or_a_prefix_ending_in_one_star() {
        for good in [
            "lobby",
            "team-*",
            "*",
            "a.b_c:d-e",
            &"r".repeat(64),
            &format!("{}*", "r".repeat(64)),
        ] {
            assert!(valid_pattern(good), "{good:?}");
        }
        for bad in [
            "team-**",
            "**",
            "*team",
            "a*b",
            "a*b*",
            "",
            "team room",
            "team/*",
            "t\u{e9}am-*",
            &"r".repeat(65),
            &format!("{}*", "r".repeat(65)),
        ] {
            assert!(!valid_pattern(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_token_with_a_malformed_room_pattern_is_refused() {
        let v = verifier(with_secret());
        for bad in ["team-**", "a*b", ""] {
            let mut c = claims();
            c.custom.rooms = Some(vec!["lobby".into(), bad.into()]);
            assert_eq!(
                v.verify(&hs(SECRET.as_bytes(), c)).await,
                Err(AuthError::BadRoomPattern),
                "rooms {bad:?}"
            );
            let mut c = claims();
            c.custom.publish = Some(vec![bad.into()]);
            assert_eq!(
                v.verify(&hs(SECRET.as_bytes(), c)).await,
                Err(AuthError::BadRoomPattern),
                "publish {bad:?}"
            );
        }
        // Well-formed patterns, and absent or empty lists, are accepted as before.
        let mut c = claims();
        c.custom.rooms = Some(vec!["*".into()]);
        c.custom.publish = Some(vec![]);
        let accepted = v.verify(&hs(SECRET.as_bytes(), c)).await.unwrap();
        assert_eq!(accepted.rooms, Some(vec!["*".to_string()]));
        assert_eq!(accepted.publish, Some(vec![]));
        let reason = AuthError::BadRoomPattern.reason();
        assert!(
            reason.contains("pattern") && !reason.contains("team-"),
            "{reason}"
        );
    }

    #[test]
    fn a_malformed_pattern_is_not_minted() {
        let request = |rooms: &[&str], publish: &[&str]| TokenRequest {
            sub: "u7".into(),
            name: "Bob".into(),
            rooms: Some(rooms.iter().map(|s| s.to_string()).collect()),
            publish: Some(publish.iter().map(|s| s.to_string()).collect()),
            ttl: Duration::from_secs(60),
        };
        let err = mint_hs256(&with_secret(), &request(&["lobby", "team-**"], &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--rooms") && err.contains("team-**"), "{err}");
        let err = mint_hs256(&with_secret(), &request(&["team-*"], &["a*b"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--publish") && err.contains("a*b"), "{err}");
        assert!(mint_hs256(&with_secret(), &request(&["team-*", "*"], &["lobby"])).is_ok());
    }

    #[tokio::test]
    async fn minted_tokens_verify_here_and_with_another_library() {
        let request = TokenRequest {
            sub: "u7".into(),
            name: " Bob ".into(),
            rooms: Some(vec!["a".into(), "team-*".into()]),
            publish: Some(vec!["a".into()]),
            ttl: Duration::from_secs(3600),
        };
        let jwt = JwtConfig {
            issuer: Some("dev".into()),
            audience: Some("roomcast".into()),
            ..with_secret()
        };
        let token = mint_hs256(&jwt, &request).unwrap();
        let c = verifier(jwt).verify(&token).await.unwrap();
        assert_eq!((c.sub.as_str(), c.name.as_str()), ("u7", "Bob"));
        assert_eq!(c.rooms, request.rooms);
        assert_eq!(c.publish, request.publish);
        let exp = c.exp.unwrap();
        assert!((now() + 3590..=now() + 3600).contains(&exp));

        let options = js::VerificationOptions {
            allowed_issuers: Some(js::HashSet::from(["dev".to_string()])),
            allowed_audiences: Some(js::HashSet::from(["roomcast".to_string()])),
            ..Default::default()
        };
        let other = js::HS256Key::from_bytes(SECRET.as_bytes())
            .verify_token::<serde_json::Value>(&token, Some(options))
            .unwrap();
        assert_eq!(other.subject.as_deref(), Some("u7"));

        // From secret_file too.
        let dir = tempdir();
        std::fs::write(dir.join("s"), format!("{SECRET}\n")).unwrap();
        let from_file = JwtConfig {
            secret_file: Some(dir.join("s")),
            ..JwtConfig::default()
        };
        let token = mint_hs256(&from_file, &request).unwrap();
        assert!(verifier(with_secret()).verify(&token).await.is_ok());
        std::fs::remove_dir_all(dir).ok();

        let err = mint_hs256(&JwtConfig::default(), &request)
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.jwt.secret"), "{err}");
        let bad_name = TokenRequest {
            name: " ".into(),
            ..request
        };
        assert!(mint_hs256(&with_secret(), &bad_name).is_err());
    }

    #[test]
    fn setup_errors_name_the_key() {
        let key_of = |jwt: JwtConfig| Verifier::from_config(&auth(jwt)).err().map(|e| e.key);
        let dir = tempdir();
        std::fs::write(
            dir.join("bad.pem"),
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        std::fs::write(dir.join("short"), "short\n").unwrap();
        let pem = |p: PathBuf| JwtConfig {
            public_key_file: Some(p),
            ..JwtConfig::default()
        };
        assert_eq!(
            key_of(pem(dir.join("bad.pem"))),
            Some("auth.jwt.public_key_file")
        );
        assert_eq!(
            key_of(pem(dir.join("missing.pem"))),
            Some("auth.jwt.public_key_file")
        );
        assert_eq!(
            key_of(pem(PathBuf::from(format!("{KEYS}/rsa_private.pem")))),
            Some("auth.jwt.public_key_file"),
            "a private key is refused"
        );
        let file = |p: PathBuf| JwtConfig {
            secret_file: Some(p),
            ..JwtConfig::default()
        };
        assert_eq!(key_of(file(dir.join("nope"))), Some("auth.jwt.secret_file"));
        assert_eq!(
            key_of(file(dir.join("short"))),
            Some("auth.jwt.secret_file")
        );
        for url in ["ftp://x/jwks", "jwks.json", "file://relative/path"] {
            let jwt = JwtConfig {
                jwks_url: Some(url.into()),
                ..JwtConfig::default()
            };
            assert_eq!(key_of(jwt), Some("auth.jwt.jwks_url"), "{url}");
        }
        for (file, alg) in [
            ("rsa_public.pem", Algorithm::RS256),
            ("ec_public.pem", Algorithm::ES256),
            ("ed25519_public.pem", Algorithm::EdDSA),
        ] {
            assert_eq!(verifier(with_pem(file)).keys[0].alg, alg, "{file}");
        }
        let v = verifier(JwtConfig {
            jwks_url: Some("https://issuer.example/.well-known/jwks.json".into()),
            ..JwtConfig::default()
        });
        assert!(v.jwks.is_some(), "https builds a TLS client");
        std::fs::remove_dir_all(dir).ok();
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::{allows, valid_pattern};

    /// Room names from a small alphabet (so patterns and rooms often overlap), valid
    /// per `roomcast_protocol::validate_room`.
    fn room() -> impl Strategy<Value = String> {
        "[ab:.-]{1,6}"
    }

    /// A pattern's text without any `*`.
    fn literal() -> impl Strategy<Value = String> {
        "[ab:.-]{0,6}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn an_exact_pattern_matches_only_its_room(pattern in literal(), room in room()) {
            prop_assert_eq!(allows(Some(std::slice::from_ref(&pattern)), &room), pattern == room);
        }

        #[test]
        fn a_prefix_pattern_matches_exactly_the_rooms_it_starts(prefix in literal(), room in room()) {
            let pattern = format!("{prefix}*");
            prop_assert_eq!(allows(Some(&[pattern]), &room), room.starts_with(&prefix));
        }

        #[test]
        fn a_star_that_is_not_last_is_no_wildcard(
            before in literal(),
            after in "[ab:.-]{1,6}",
            room in room(),
        ) {
            // `a*b` is no glob: no valid room (no room has a `*`) matches it, whatever
            // surrounds the star.
            let pattern = format!("{before}*{after}");
            prop_assert!(!allows(Some(&[pattern]), &room));
            let prefix_pattern = format!("{before}*{after}*");
            prop_assert!(!allows(Some(&[prefix_pattern]), &room));
        }

        #[test]
        fn a_star_anywhere_but_once_at_the_end_makes_a_pattern_malformed(
            before in literal(),
            after in "[ab:.*-]{0,6}",
        ) {
            // `team-**`, `a*b`, `*a*`: refused in a token rather than matching nothing.
            let pattern = format!("{before}*{after}");
            prop_assert_eq!(valid_pattern(&pattern), after.is_empty());
        }

        #[test]
        fn refusing_malformed_patterns_takes_away_no_room(pattern in "[ab:.* -]{0,8}", room in room()) {
            // A pattern that is not well-formed never matched a valid room, so refusing
            // the token only makes a silent "nothing" explicit.
            if !valid_pattern(&pattern) {
                prop_assert!(!allows(Some(std::slice::from_ref(&pattern)), &room));
            }
        }

        #[test]
        fn every_room_and_prefix_pattern_is_well_formed(room in room()) {
            prop_assert!(valid_pattern(&room));
            let prefix = format!("{room}*");
            prop_assert!(valid_pattern(&prefix));
            prop_assert!(allows(Some(std::slice::from_ref(&room)), &room));
            prop_assert!(allows(Some(&[prefix]), &room));
        }

        #[test]
        fn a_list_allows_what_any_of_its_patterns_allows(
            patterns in prop::collection::vec(prop_oneof![literal(), literal().prop_map(|p| format!("{p}*"))], 0..4),
            room in room(),
        ) {
            let any = patterns.iter().any(|p| allows(Some(std::slice::from_ref(p)), &room));
            prop_assert_eq!(allows(Some(&patterns), &room), any);
            // No list: every room; an empty list: none.
            prop_assert!(allows(None, &room));
            prop_assert!(!allows(Some(&[]), &room));
        }

        #[test]
        fn a_matching_room_stays_matched_when_more_patterns_are_added(
            patterns in prop::collection::vec(literal(), 0..3),
            extra in literal(),
            room in room(),
        ) {
            let mut more = patterns.clone();
            more.push(extra);
            prop_assert!(!allows(Some(&patterns), &room) || allows(Some(&more), &room));
        }
    }
}
