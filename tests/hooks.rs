//! The publish hook (`hooks.publish`) end to end: real gateways, real WebSocket clients and
//! a backend served by the test (`common::backend`). Before each client message is
//! published the gateway POSTs it, signed, to the backend, whose reply allows, rewrites or
//! denies it; a backend that fails or is too slow leaves the decision to
//! `hooks.publish.on_error`. A denied message reaches no one, not even the history.

mod common;

use common::backend::*;
use common::*;
use jwt_simple::prelude::{self as js, MACLike};
use roomcast::config::OnError;
use serde::{Deserialize, Serialize};

/// The hook timeout of the tests that do not test it: generous, so a loaded CI machine
/// does not turn answers into errors.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The hook timeout of the slow-backend tests, and how slow that backend is.
const SHORT_TIMEOUT: Duration = Duration::from_millis(300);
const SLOW: Duration = Duration::from_secs(3);
/// What the client is told when the hook failed and `on_error = "deny"`.
const UNAVAILABLE: &str = "the publish hook is unavailable";

/// One memory-bus gateway whose publish hook is `url`.
async fn gateway(url: &str, timeout: Duration, on_error: OnError) -> Cluster {
    Cluster::start(Bus::Memory, 1, hooked(url, timeout, on_error)).await
}

/// A backend that decides by the message text.
async fn backend(decide: impl Fn(&str) -> Answer + Send + Sync + 'static) -> Backend {
    Backend::start(move |body| decide(body["text"].as_str().unwrap_or_default())).await
}

/// The URL of a port nobody listens on: a backend that is down.
fn down_url() -> String {
    format!("http://127.0.0.1:{}/hooks/publish", free_port())
}

/// Sends `text` with `reference` and returns the answer, which must be an `error`
/// (presence frames before it are skipped; anything else fails).
async fn refused(client: &mut Client, room: &str, text: &str, reference: &str) -> Value {
    client
        .send_json(json!({"type": "send", "room": room, "text": text, "ref": reference}))
        .await;
    loop {
        let v = client.next_json().await;
        match v["type"].as_str() {
            Some("presence") => {}
            Some("error") => return v,
            _ => panic!("expected the refusal of {text:?}, got {v}"),
        }
    }
}

/// The `rejected` error frame a client gets for a refused send.
fn rejected(reason: &str, reference: &str) -> Value {
    json!({"type": "error", "code": "rejected", "message": reason, "ref": reference})
}

/// Two members of `room` on `c` (alice sends, bob listens); alice has seen bob join.
async fn two_members(c: &Cluster, room: &str) -> (Client, Client) {
    let mut alice = c.client(0).await;
    alice.join(room, "alice").await;
    let mut bob = c.client(1).await;
    bob.join(room, "bob").await;
    alice.wait_presence(room, "join", "bob").await;
    (alice, bob)
}

/// The next message each client gets has `text` and the id of `ack`.
async fn everyone_gets(clients: &mut [&mut Client], ack: &Value, text: &str) {
    for client in clients.iter_mut() {
        let m = client.next_message().await;
        assert_eq!((id_of(&m), text_of(&m)), (id_of(ack), text.to_string()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_message_is_published_unchanged() {
    let backend = backend(|_| Answer::allow()).await;
    let c = gateway(&backend.url, TIMEOUT, OnError::Deny).await;
    let (mut alice, mut bob) = two_members(&c, "lobby").await;
    let ack = alice.send("lobby", "hello, world").await;
    everyone_gets(&mut [&mut alice, &mut bob], &ack, "hello, world").await;
    assert_eq!(backend.calls().len(), 1, "one hook call per message");
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_message_is_rejected_with_the_reason_and_reaches_no_one() {
    let reason = "no links, please";
    let backend = backend(move |text| {
        if text.contains("http") {
            Answer::deny(reason)
        } else {
            Answer::allow()
        }
    })
    .await;
    let c = gateway(&backend.url, TIMEOUT, OnError::Deny).await;
    let (mut alice, mut bob) = two_members(&c, "lobby").await;
    let first = alice.send("lobby", "first").await;
    everyone_gets(&mut [&mut alice, &mut bob], &first, "first").await;

    let err = refused(&mut alice, "lobby", "see http://spam.example", "d1").await;
    assert_eq!(err, rejected(reason, "d1"));

    // The next message anyone gets is the one after the refused one.
    let last = alice.send("lobby", "last").await;
    everyone_gets(&mut [&mut alice, &mut bob], &last, "last").await;

    // Nor is it in the history: neither a replay of the last messages ...
    let mut carol = c.client(0).await;
    let joined = carol
        .try_join_frame(json!({"room": "lobby", "name": "carol", "history": 10}))
        .await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let replay: Vec<String> = carol
        .messages_until("last")
        .await
        .iter()
        .map(text_of)
        .collect();
    assert_eq!(replay, ["first", "last"]);
    // ... nor a resume after the message before it.
    let mut dave = c.client(0).await;
    dave.join_since("lobby", "dave", &id_of(&first)).await;
    let replay: Vec<String> = dave
        .messages_until("last")
        .await
        .iter()
        .map(text_of)
        .collect();
    assert_eq!(replay, ["last"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_without_a_reason_gets_the_default_reason() {
    let backend = backend(|_| Answer::json(json!({"action": "deny"}))).await;
    let c = gateway(&backend.url, TIMEOUT, OnError::Allow).await;
    let mut alice = c.client(0).await;
    alice.join("lobby", "alice").await;
    let err = refused(&mut alice, "lobby", "anything", "d2").await;
    assert_eq!(err, rejected("denied by the publish hook", "d2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rewritten_text_reaches_every_member() {
    let backend = backend(|text| Answer::rewrite(&text.replace("darn", "d**n"))).await;
    let c = gateway(&backend.url, TIMEOUT, OnError::Deny).await;
    let (mut alice, mut bob) = two_members(&c, "lobby").await;
    let ack = alice.send("lobby", "darn it").await;
    everyone_gets(&mut [&mut alice, &mut bob], &ack, "d**n it").await;
    // A rewrite to the same text is an allow.
    let ack = alice.send("lobby", "fine").await;
    everyone_gets(&mut [&mut alice, &mut bob], &ack, "fine").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_backend_with_on_error_deny_rejects_the_message() {
    let backend = backend(|_| Answer::allow().after(SLOW)).await;
    let c = gateway(&backend.url, SHORT_TIMEOUT, OnError::Deny).await;
    let (mut alice, mut bob) = two_members(&c, "lobby").await;
    let started = std::time::Instant::now();
    let err = refused(&mut alice, "lobby", "too late", "t1").await;
    assert_eq!(err, rejected(UNAVAILABLE, "t1"));
    assert!(
        started.elapsed() < SLOW,
        "refused after {:?}: the hook timeout did not cut the call",
        started.elapsed()
    );
    bob.assert_silent(SHORT_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_backend_with_on_error_allow_publishes_the_message() {
    let backend = backend(|_| Answer::deny("never seen").after(SLOW)).await;
    let c = gateway(&backend.url, SHORT_TIMEOUT, OnError::Allow).await;
    let (mut alice, mut bob) = two_members(&c, "lobby").await;
    let started = std::time::Instant::now();
    let ack = alice.send("lobby", "unchecked").await;
    assert!(
        started.elapsed() < SLOW,
        "acked after {:?}",
        started.elapsed()
    );
    everyone_gets(&mut [&mut alice, &mut bob], &ack, "unchecked").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_backend_with_on_error_deny_rejects_the_message() {
    let c = gateway(&down_url(), TIMEOUT, OnError::Deny).await;
    let (mut alice, mut bob) = two_members(&c, "lobby").await;
    let err = refused(&mut alice, "lobby", "anyone there?", "u1").await;
    assert_eq!(err, rejected(UNAVAILABLE, "u1"));
    bob.assert_silent(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_backend_with_on_error_allow_publishes_the_message() {
    let c = gateway(&down_url(), TIMEOUT, OnError::Allow).await;
    let (mut alice, mut bob) = two_members(&c, "lobby").await;
    let ack = alice.send("lobby", "anyone there?").await;
    everyone_gets(&mut [&mut alice, &mut bob], &ack, "anyone there?").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_other_than_allow_or_deny_are_errors_for_on_error() {
    let backend = backend(|text| match text {
        "500" => Answer::raw(500, r#"{"action":"allow"}"#),
        "302" => Answer::raw(302, ""),
        "not json" => Answer::raw(200, "allow"),
        "unknown action" => Answer::json(json!({"action": "publish"})),
        "empty rewrite" => Answer::rewrite(""),
        _ => Answer::allow(),
    })
    .await;
    let c = gateway(&backend.url, TIMEOUT, OnError::Deny).await;
    let mut alice = c.client(0).await;
    alice.join("lobby", "alice").await;
    for (i, text) in ["500", "302", "not json", "unknown action", "empty rewrite"]
        .into_iter()
        .enumerate()
    {
        let reference = format!("b{i}");
        let err = refused(&mut alice, "lobby", text, &reference).await;
        assert_eq!(err, rejected(UNAVAILABLE, &reference), "reply to {text:?}");
    }
    let errors = metric_value(
        &c.node(0).admin_url,
        "roomcast_hook_requests_total",
        &[("result", "error")],
    )
    .await;
    assert_eq!(errors, 5.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn signature_header_verifies_against_the_body_with_the_secret() {
    let backend = backend(|_| Answer::allow()).await;
    let c = gateway(&backend.url, TIMEOUT, OnError::Deny).await;
    let mut alice = c.client(0).await;
    alice.join("lobby", "alice").await;
    alice.send("lobby", "sign me: ünïcode \"quotes\"").await;
    let calls = backend.wait_calls(1).await;
    let call = &calls[0];
    assert_eq!(call.content_type.as_deref(), Some("application/json"));
    let signature = call.signature.as_deref().expect("X-Roomcast-Signature");
    assert_eq!(signature, expected_signature(HOOK_SECRET, &call.body));
    let hex = signature.strip_prefix("sha256=").expect("sha256= prefix");
    assert!(
        hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "not lowercase hex: {signature}"
    );
    assert_ne!(
        signature,
        expected_signature("another-secret-of-32-bytes-long!", &call.body),
        "the signature depends on the secret"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_body_carries_room_user_text_and_conn() {
    let backend = backend(|_| Answer::allow()).await;
    let c = gateway(&backend.url, TIMEOUT, OnError::Deny).await;
    let mut alice = c.client(0).await;
    alice.join("lobby", "alice").await;
    alice.send("lobby", "what the backend sees").await;
    let body = backend.wait_calls(1).await[0].json();
    assert_eq!(
        body,
        json!({
            "room": "lobby",
            "user": {"id": null, "name": "alice"},
            "text": "what the backend sees",
            "conn": alice.welcome["conn"],
        })
    );
}

const JWT_SECRET: &str = "integration-secret-of-32-bytes!!";

#[derive(Serialize, Deserialize)]
struct NameClaim {
    name: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn request_user_id_is_the_token_subject_in_jwt_mode() {
    let backend = backend(|_| Answer::allow()).await;
    let hook = hooked(&backend.url, TIMEOUT, OnError::Deny);
    let c = Cluster::start(Bus::Memory, 1, move |cfg| {
        hook(cfg);
        cfg.auth.mode = roomcast::config::AuthMode::Jwt;
        cfg.auth.jwt.secret = Some(JWT_SECRET.into());
    })
    .await;
    let claims = js::Claims::with_custom_claims(
        NameClaim {
            name: "Alice".into(),
        },
        js::Duration::from_secs(600),
    )
    .with_subject("u-42");
    let token = js::HS256Key::from_bytes(JWT_SECRET.as_bytes())
        .authenticate(claims)
        .expect("sign");
    let mut alice = Client::connect(&format!("{}?token={token}", c.node(0).ws_url)).await;
    alice.join("lobby", "ignored").await;
    alice.send("lobby", "hi").await;
    let body = backend.wait_calls(1).await[0].json();
    assert_eq!(body["user"], json!({"id": "u-42", "name": "Alice"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn hook_requests_total_counts_each_result() {
    let backend = backend(|text| match text {
        "swap" => Answer::rewrite("swapped"),
        "no" => Answer::deny("no"),
        "boom" => Answer::raw(503, ""),
        _ => Answer::allow(),
    })
    .await;
    let c = gateway(&backend.url, TIMEOUT, OnError::Allow).await;
    let admin = &c.node(0).admin_url;
    let metrics = metrics_text(admin).await;
    for result in ["allow", "rewrite", "deny", "error"] {
        assert_eq!(
            sample_value(
                &metrics,
                "roomcast_hook_requests_total",
                &[("result", result)]
            ),
            Some(0.0),
            "{result} exported from the start as 0"
        );
    }
    let mut alice = c.client(0).await;
    alice.join("lobby", "alice").await;
    alice.send("lobby", "ok").await;
    alice.send("lobby", "swap").await;
    alice.messages_until("swapped").await;
    refused(&mut alice, "lobby", "no", "m1").await;
    alice.send("lobby", "boom").await; // published: on_error = "allow"
    let metrics = metrics_text(admin).await;
    for result in ["allow", "rewrite", "deny", "error"] {
        assert_eq!(
            sample_value(
                &metrics,
                "roomcast_hook_requests_total",
                &[("result", result)]
            ),
            Some(1.0),
            "result {result}"
        );
    }
    assert_eq!(
        sample_value(&metrics, "roomcast_hook_duration_seconds_count", &[]),
        Some(4.0),
        "every call is timed, failures included"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verdicts_hold_across_replicas_on_redis() {
    let backend = backend(|text| {
        if text.contains("spam") {
            Answer::deny("spam")
        } else {
            Answer::rewrite(&text.replace("darn", "d**n"))
        }
    })
    .await;
    let c = Cluster::start(Bus::Redis, 2, hooked(&backend.url, TIMEOUT, OnError::Deny)).await;
    let (mut alice, mut bob) = two_members(&c, "lobby").await;
    assert_ne!(alice.node_id(), bob.node_id(), "one member per replica");

    let err = refused(&mut alice, "lobby", "buy spam", "r1").await;
    assert_eq!(err, rejected("spam", "r1"));
    let ack = bob.send("lobby", "darn, replicas").await;
    everyone_gets(&mut [&mut alice, &mut bob], &ack, "d**n, replicas").await;
    let ack = alice.send("lobby", "plain").await;
    everyone_gets(&mut [&mut alice, &mut bob], &ack, "plain").await;

    // Each replica asked about its own client's messages.
    let conns: Vec<Value> = backend
        .wait_calls(3)
        .await
        .iter()
        .map(|call| call.json()["conn"].clone())
        .collect();
    assert_eq!(
        conns,
        [
            alice.welcome["conn"].clone(),
            bob.welcome["conn"].clone(),
            alice.welcome["conn"].clone()
        ]
    );
}
