//! Time, in one place. Wall-clock time (Unix µs) only stamps messages (`ts`, delivery
//! latency across replicas, memory-bus ids in Redis' `<ms>-<seq>` form); every duration
//! the gateway acts on (heartbeat silence, rate limits, liveness refresh, idle rooms)
//! is measured on tokio's monotonic clock, so a clock step cannot close every session
//! or none, and tests can pause time.

use std::sync::OnceLock;

use tokio::time::Instant;

/// Microseconds since the Unix epoch (wall clock; for timestamps only).
pub(crate) fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Milliseconds on the monotonic clock since the first call in this process; fits an
/// atomic, so hot paths can record "last seen" without a lock.
pub(crate) fn monotonic_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    Instant::now().saturating_duration_since(base).as_millis() as u64
}
