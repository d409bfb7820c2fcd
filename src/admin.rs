//! The admin listener: Prometheus `/metrics`, liveness `/healthz` and readiness
//! `/readyz`, apart from client traffic. Readiness is a latch that means something: the
//! bus is connected, this node's liveness is recorded, every active room is subscribed,
//! and the node is not draining.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// What the admin endpoints ask of the gateway.
pub(crate) trait Health: Clone + Send + Sync + 'static {
    /// `Ok` when this node can serve, else the reason (`draining`, `bus_down`, ...).
    fn readiness(&self) -> Result<(), &'static str>;
    /// The metrics in Prometheus text format.
    fn metrics_text(&self) -> String;
}

pub(crate) fn router<S: Health>(state: S) -> Router {
    Router::new()
        .route("/metrics", get(metrics::<S>))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .with_state(state)
}

async fn metrics<S: Health>(State(state): State<S>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics_text(),
    )
        .into_response()
}

/// Liveness: answering at all means the process and its runtime work.
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: 200 only when this node can serve; 503 with the reason otherwise.
pub(crate) async fn readyz<S: Health>(State(state): State<S>) -> Response {
    let json = [(header::CONTENT_TYPE, "application/json")];
    match state.readiness() {
        Ok(()) => (StatusCode::OK, json, r#"{"ready":true}"#.to_string()).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json,
            format!(r#"{{"ready":false,"reason":"{reason}"}}"#),
        )
            .into_response(),
    }
}
