//! roomcast: a horizontally scalable WebSocket chat gateway.
//!
//! Clients join rooms over WebSocket and chat; any number of stateless replicas share
//! every room through Redis, or a single node runs on an in-process bus.
//!
//! # Layout
//! - [`config`]: the typed configuration (defaults < file < `ROOMCAST_*` env), validated.
//! - [`protocol`]: the client wire protocol v1, validation, message ids, colors.
//! - [`server`]: wiring of one gateway, the client router, background tasks, the drain.
//! - [`session`]: one task per WebSocket: read loop, batched writer, limits, cleanup guard.
//! - [`hub`]: local rooms and members, subscription ref-counting, encode-once fan-out.
//! - [`bus`]: the bus between replicas (memory or Redis): publish with room offsets,
//!   presence with per-node expiry, per-room history for resume.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`metrics`]: the Prometheus metrics (names documented in `docs/operations.md`).
//! - [`telemetry`]: logs and OpenTelemetry trace export.
//! - [`shutdown`]: the process signal handling (SIGTERM/SIGINT).
//! - [`web`]: the embedded chat page.
//! - [`bench`]: the load generator (`roomcast bench`) and probe (`roomcast probe`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod bench;
pub mod bus;
pub mod config;
pub mod hub;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod telemetry;
pub mod web;

pub use config::Config;
pub use server::{Error, Listeners, run};
