//! Behaviour: with an OTLP/HTTP endpoint configured, a message sent on one replica and
//! received on another produces one trace: the `send` span on the sender's replica and the
//! `fan_out` span on the receiver's replica (its child, across Redis), and the exported data
//! tells the replicas apart. The collector is an in-process OTLP/HTTP receiver (axum,
//! protobuf decoded with prost); the gateways are real processes flushing on SIGTERM.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

use common::*;

const ROOM: &str = "traced";

/// What the receiver got: per export request, the path tag (`""` for `/v1/traces`) and
/// the decoded request; decode failures are kept as errors.
#[derive(Clone, Default)]
struct Received {
    requests: Arc<Mutex<Vec<(String, ExportTraceServiceRequest)>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Received {
    fn accept(&self, tag: String, body: &[u8]) -> StatusCode {
        match ExportTraceServiceRequest::decode(body) {
            Ok(request) => {
                self.requests.lock().expect("lock").push((tag, request));
                StatusCode::OK
            }
            Err(e) => {
                self.errors
                    .lock()
                    .expect("lock")
                    .push(format!("{tag}: {e} ({} bytes)", body.len()));
                StatusCode::BAD_REQUEST
            }
        }
    }
}

/// An OTLP/HTTP trace receiver on a loopback port: `POST /v1/traces` and
/// `POST /{tag}/v1/traces` (so an endpoint `http://HOST/a` marks what replica `a` exported).
async fn start_receiver() -> (String, Received) {
    let received = Received::default();
    let app =
        Router::new()
            .route(
                "/v1/traces",
                post(|State(r): State<Received>, body: Bytes| async move {
                    r.accept(String::new(), &body)
                }),
            )
            .route(
                "/{tag}/v1/traces",
                post(
                    |State(r): State<Received>, Path(tag): Path<String>, body: Bytes| async move {
                        r.accept(tag, &body)
                    },
                ),
            )
            .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("receiver addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("receiver");
    });
    (format!("http://{addr}"), received)
}

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct SpanRec {
    /// The receiver path tag the span was posted under.
    tag: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attrs: BTreeMap<String, String>,
    resource: BTreeMap<String, String>,
}

fn text_of_value(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr_map(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text_of_value(&kv.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Received {
    fn spans(&self) -> Vec<SpanRec> {
        let requests = self.requests.lock().expect("lock");
        let mut out = Vec::new();
        for (tag, request) in requests.iter() {
            for rs in &request.resource_spans {
                let resource = rs
                    .resource
                    .as_ref()
                    .map(|r| attr_map(&r.attributes))
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push(SpanRec {
                            tag: tag.clone(),
                            name: span.name.clone(),
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent_span_id: hex(&span.parent_span_id),
                            attrs: attr_map(&span.attributes),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        out
    }
}

/// Which replica exported a span, from the exported data alone: the resource's
/// `service.instance.id` (docs/operations.md: each replica's spans carry its node id there).
/// A span's own `node` attribute, when it has one, must agree.
fn replica_of(span: &SpanRec) -> Option<&str> {
    let instance = span.resource.get("service.instance.id").map(String::as_str);
    if let Some(node) = span.attrs.get("node") {
        assert_eq!(
            Some(node.as_str()),
            instance,
            "span `node` attribute and resource service.instance.id disagree: {span:?}"
        );
    }
    instance
}

/// The spans of one traced message and the id it was acked with.
struct Scenario {
    spans: Vec<SpanRec>,
    ack_id: String,
    errors: Vec<String>,
}

/// Receiver, Redis, replicas `trace-a` and `trace-b` exporting to it (under the path tags
/// `a` and `b` when `tagged`); alice on A sends one message that bob on B receives; both
/// replicas get SIGTERM and exit (flushing their spans).
async fn one_message_across_replicas(tagged: bool) -> Scenario {
    let (base, received) = start_receiver().await;
    let redis = RedisServer::start().await;
    let endpoint = |tag: &str| {
        if tagged {
            format!("{base}/{tag}")
        } else {
            base.clone()
        }
    };
    let (endpoint_a, endpoint_b) = (endpoint("a"), endpoint("b"));
    let env = |endpoint: &str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_string()),
            ("ROOMCAST_DRAIN__SPREAD", "100ms".to_string()),
            ("ROOMCAST_DRAIN__TIMEOUT", "5s".to_string()),
        ]
    };
    let (env_a, env_b) = (env(&endpoint_a), env(&endpoint_b));
    fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
    let mut a = ProcessNode::start(Some(&redis), "trace-a", &refs(&env_a)).await;
    let mut b = ProcessNode::start(Some(&redis), "trace-b", &refs(&env_b)).await;

    let mut alice = a.client().await;
    alice.join(ROOM, "alice").await;
    let mut bob = b.client().await;
    bob.join(ROOM, "bob").await;
    alice.wait_presence(ROOM, "join", "bob").await;
    let ack = alice.send(ROOM, "follow me").await;
    let m = bob.next_message().await;
    assert_eq!(id_of(&m), id_of(&ack), "bob got another message: {m}");
    let ack_id = id_of(&ack);
    alice.close().await;
    bob.close().await;

    a.signal_term().await;
    b.signal_term().await;
    for node in [&mut a, &mut b] {
        let status = node.wait(Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(0), "exit status {status:?}");
    }

    // The exporters flushed before exiting; give the receiver a moment to finish decoding.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans = received.spans();
        let fan_outs = spans
            .iter()
            .filter(|s| s.name == "fan_out" && s.attrs.get("id") == Some(&ack_id))
            .count();
        let sends = spans.iter().filter(|s| s.name == "send").count();
        if (fan_outs >= 2 && sends >= 1) || Instant::now() > deadline {
            return Scenario {
                spans,
                ack_id,
                errors: received.errors.lock().expect("lock").clone(),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn describe(spans: &[&SpanRec]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "  [{}] {} trace={} span={} parent={} attrs={:?} resource={:?}",
                s.tag, s.name, s.trace_id, s.span_id, s.parent_span_id, s.attrs, s.resource
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The one `send` span of the scenario (room `ROOM`).
fn the_send(s: &Scenario) -> &SpanRec {
    assert!(s.errors.is_empty(), "undecodable exports: {:?}", s.errors);
    let sends: Vec<&SpanRec> = s
        .spans
        .iter()
        .filter(|sp| sp.name == "send" && sp.attrs.get("room").map(String::as_str) == Some(ROOM))
        .collect();
    let all: Vec<&SpanRec> = s.spans.iter().collect();
    assert_eq!(
        sends.len(),
        1,
        "expected one `send` span for room {ROOM}; got:\n{}",
        describe(&all)
    );
    sends[0]
}

/// The exported data identifies the replicas: the `send` span comes from `trace-a`, and the
/// same trace holds a `fan_out` span of the message, identified as `trace-b`, whose parent
/// is that `send` span (the trace context crossed Redis in the envelope).
#[tokio::test(flavor = "multi_thread")]
async fn message_trace_holds_send_on_the_sender_replica_and_fan_out_on_the_receiver_replica() {
    let s = one_message_across_replicas(false).await;
    let send = the_send(&s);
    let trace: Vec<&SpanRec> = s
        .spans
        .iter()
        .filter(|sp| sp.trace_id == send.trace_id)
        .collect();
    assert_eq!(
        replica_of(send),
        Some("trace-a"),
        "the `send` span does not say it ran on trace-a:\n{}",
        describe(&[send])
    );
    assert_eq!(
        send.resource.get("service.name").map(String::as_str),
        Some("roomcast")
    );
    let fan_out_b = trace.iter().find(|sp| {
        sp.name == "fan_out"
            && sp.attrs.get("id") == Some(&s.ack_id)
            && replica_of(sp) == Some("trace-b")
    });
    let Some(fan_out_b) = fan_out_b else {
        panic!(
            "no `fan_out` span of message {} identified as replica trace-b (resource \
             `service.instance.id`) in trace {}; the trace:\n{}",
            s.ack_id,
            send.trace_id,
            describe(&trace)
        );
    };
    assert_eq!(
        fan_out_b.parent_span_id,
        send.span_id,
        "the fan_out on trace-b is not a child of the send:\n{}",
        describe(&trace)
    );
    assert_eq!(fan_out_b.attrs.get("room").map(String::as_str), Some(ROOM));
}

/// Independently of how spans are labelled: the `fan_out` span exported by the receiving
/// replica (told apart by its export endpoint) is in the sender's trace, child of `send`.
#[tokio::test(flavor = "multi_thread")]
async fn fan_out_exported_by_the_receiving_replica_joins_the_senders_trace() {
    let s = one_message_across_replicas(true).await;
    let send = the_send(&s);
    let all: Vec<&SpanRec> = s.spans.iter().collect();
    assert_eq!(
        send.tag,
        "a",
        "the send was exported by another replica:\n{}",
        describe(&all)
    );
    let from_b: Vec<&SpanRec> = s
        .spans
        .iter()
        .filter(|sp| sp.tag == "b" && sp.name == "fan_out" && sp.attrs.get("id") == Some(&s.ack_id))
        .collect();
    assert_eq!(
        from_b.len(),
        1,
        "expected one fan_out of {} exported by replica b; all spans:\n{}",
        s.ack_id,
        describe(&all)
    );
    assert_eq!(
        (&from_b[0].trace_id, &from_b[0].parent_span_id),
        (&send.trace_id, &send.span_id),
        "the fan_out on b is not in the sender's trace as a child of send:\n{}",
        describe(&all)
    );
}
