//! roomcast: a horizontally scalable WebSocket chat gateway.
//!
//! Clients join rooms over WebSocket and chat; any number of stateless replicas share
//! every room through Redis, or a single node runs on an in-process bus.
//!
//! # Layout (bottom up: each layer imports only the ones above it in this list)
//! - [`config`]: the typed configuration (defaults < file < `ROOMCAST_*` env), validated.
//! - `protocol`: the client wire protocol, from the shared `roomcast-protocol` crate,
//!   plus encoding frames to shared WebSocket bytes.
//! - `clock`: wall-clock timestamps and the monotonic clock every timeout uses.
//! - `tls`: the rustls client configuration of every outgoing HTTP client.
//! - `metrics`: the Prometheus metrics (names documented in `docs/operations.md`).
//! - [`telemetry`]: logs and OpenTelemetry trace export.
//! - `bus`: the bus between replicas (memory or Redis), complete: publish with room
//!   offsets, subscriptions, history, presence, node liveness and reaping, recovery,
//!   shutdown. Nothing above it asks which bus runs.
//! - `rooms`: the one owner of join, leave and publish; local members, ref-counted
//!   subscriptions, encode-once fan-out, recovery after a bus reconnect.
//! - `auth`: token verification (jwt mode): keys with the algorithm fixed by the key,
//!   JWKS, claims, room patterns, room tokens; `roomcast token` minting.
//! - `session`: one task per WebSocket: read loop, batched writer and its queue
//!   protocol, limits, cleanup guard; the registry of sessions.
//! - `admin`: `/metrics`, `/healthz`, `/readyz`.
//! - `web`: the embedded chat page.
//! - `edge`: the connection edge: allowed origins, client address behind trusted proxies,
//!   per-address limits.
//! - `server`: wiring of one gateway, listeners, background tasks, the drain ([`run`]).
//! - [`shutdown`]: the process signal handling (SIGTERM/SIGINT).
//! - [`probe`]: the end-to-end probe (`roomcast probe`).
//! - `fuzzing` (hidden): entry points for the fuzz targets in `crates/fuzz`, forwarding to
//!   the private decoders of outside data; not an API.
//!
//! # Public API
//! [`run`] a gateway on [`Listeners`] you bound, with a [`Config`] (usually from
//! [`Config::load`]), until a shutdown token is cancelled; [`telemetry::init`] and
//! [`shutdown::spawn_handler`] are what the binary adds around it; [`mint_hs256`] makes
//! development tokens (`roomcast token`).
#![forbid(unsafe_code)]

// In layer order, bottom up (see the list above).
pub mod config;
mod protocol;

mod clock;
mod metrics;
pub mod telemetry;
mod tls;

mod bus;

pub(crate) mod api;
mod auth;
pub(crate) mod hooks;

mod rooms;

mod session;

mod admin;
mod edge;
mod server;
mod web;

pub mod api_cli;
pub mod probe;
pub mod shutdown;

#[doc(hidden)]
pub mod fuzzing;

pub use auth::{TokenRequest, mint_hs256};
pub use config::{Config, RedisMode};
pub use server::{Error, Listeners, run};
