//! The admin listener: Prometheus `/metrics`, liveness `/healthz` and readiness
//! `/readyz`, apart from client traffic. Readiness is a latch that means something: the
//! bus is connected, every active room is subscribed, and the node is not draining.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::server::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics().render(),
    )
        .into_response()
}

/// Liveness: answering at all means the process and its runtime work.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: 200 only when this node can serve; 503 with the reason otherwise.
pub async fn readyz(State(state): State<AppState>) -> Response {
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
