//! A product backend for the publish hook tests: an axum server on loopback port 0 that
//! records every hook request (headers and the exact body bytes) and answers what the
//! test's function decides, optionally after a delay (a slow backend).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::FRAME_TIMEOUT;

/// The `hooks.secret` the hooked gateways sign with.
pub const HOOK_SECRET: &str = "hook-secret-for-the-tests-32byte";

/// One request the backend received.
#[derive(Clone, Debug)]
pub struct HookCall {
    pub content_type: Option<String>,
    /// `X-Roomcast-Signature`.
    pub signature: Option<String>,
    /// The body exactly as received (what the signature covers).
    pub body: Vec<u8>,
}

impl HookCall {
    /// The body parsed as JSON (panics if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "hook body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// What the backend answers to one request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// How long to wait before answering.
    pub delay: Duration,
}

impl Answer {
    /// `200 {"action":"allow"}`
    pub fn allow() -> Answer {
        Answer::json(json!({"action": "allow"}))
    }

    /// `200 {"action":"allow","text":TEXT}`
    pub fn rewrite(text: &str) -> Answer {
        Answer::json(json!({"action": "allow", "text": text}))
    }

    /// `200 {"action":"deny","reason":REASON}`
    pub fn deny(reason: &str) -> Answer {
        Answer::json(json!({"action": "deny", "reason": reason}))
    }

    /// 200 with this JSON body.
    pub fn json(body: Value) -> Answer {
        Answer::raw(200, &body.to_string())
    }

    /// Any status and body.
    pub fn raw(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// The same answer, given after `delay`.
    pub fn after(self, delay: Duration) -> Answer {
        Answer { delay, ..self }
    }
}

type Decide = dyn Fn(&Value) -> Answer + Send + Sync;

#[derive(Clone)]
struct Shared {
    decide: Arc<Decide>,
    calls: Arc<Mutex<Vec<HookCall>>>,
    count: Arc<watch::Sender<usize>>,
}

/// The backend server; stopped on drop.
pub struct Backend {
    pub addr: SocketAddr,
    /// `http://ADDR/hooks/publish`, for `hooks.publish.url`.
    pub url: String,
    calls: Arc<Mutex<Vec<HookCall>>>,
    count: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl Backend {
    /// Starts a backend that answers each request with `decide(body as JSON)` (the body
    /// reads as `null` if it is not JSON).
    pub async fn start(decide: impl Fn(&Value) -> Answer + Send + Sync + 'static) -> Backend {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (tx, count) = watch::channel(0usize);
        let shared = Shared {
            decide: Arc::new(decide),
            calls: calls.clone(),
            count: Arc::new(tx),
        };
        let app = axum::Router::new()
            .route("/hooks/publish", axum::routing::post(handle))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the backend");
        let addr = listener.local_addr().expect("backend addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Backend {
            addr,
            url: format!("http://{addr}/hooks/publish"),
            calls,
            count,
            task,
        }
    }

    /// Every request received so far.
    pub fn calls(&self) -> Vec<HookCall> {
        self.calls.lock().expect("calls lock").clone()
    }

    /// Waits until at least `n` requests arrived (panics after [`FRAME_TIMEOUT`]); returns
    /// them all.
    pub async fn wait_calls(&self, n: usize) -> Vec<HookCall> {
        let mut count = self.count.clone();
        let reached = tokio::time::timeout(FRAME_TIMEOUT, count.wait_for(|c| *c >= n)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "the backend got {} of {n} hook requests",
            self.calls().len()
        );
        self.calls()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let call = HookCall {
        content_type: text(header::CONTENT_TYPE.as_str()),
        signature: text("x-roomcast-signature"),
        body: body.to_vec(),
    };
    let parsed = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = {
        let mut calls = shared.calls.lock().expect("calls lock");
        calls.push(call);
        calls.len()
    };
    shared.count.send_replace(n);
    let answer = (shared.decide)(&parsed);
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let status = StatusCode::from_u16(answer.status).expect("a valid status");
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        answer.body,
    )
        .into_response()
}

/// `sha256=<lowercase hex HMAC-SHA256 of body with secret>`, computed independently of
/// the gateway (what a backend does to verify a request).
pub fn expected_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// A config tweak: the publish hook on `url`, signed with [`HOOK_SECRET`], with `timeout`
/// and `on_error`.
pub fn hooked(
    url: &str,
    timeout: Duration,
    on_error: roomcast::config::OnError,
) -> impl Fn(&mut roomcast::Config) + use<> {
    let url = url.to_string();
    move |cfg: &mut roomcast::Config| {
        cfg.hooks.secret = Some(HOOK_SECRET.into());
        cfg.hooks.publish.url = Some(url.clone());
        cfg.hooks.publish.timeout = timeout;
        cfg.hooks.publish.on_error = on_error;
    }
}
