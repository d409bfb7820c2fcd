//! Prometheus metrics (the `prometheus` crate, one registry per gateway so tests can run
//! several in one process). The names are an interface; see `docs/operations.md`.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::protocol::{DisconnectReason, ErrorCode};

/// Every `reason` of `roomcast_refused_total`, exported from the start.
pub(crate) const REFUSED_REASONS: [&str; 6] = [
    "unauthorized",
    "expired",
    "forbidden",
    "origin",
    "ip_limit",
    "header_timeout",
];

pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) connections: IntGauge,
    pub(crate) connections_total: IntCounterVec,
    refused: IntCounterVec,
    pub(crate) rooms: IntGauge,
    pub(crate) joins: IntCounter,
    pub(crate) leaves: IntCounter,
    pub(crate) messages_received: IntCounter,
    pub(crate) messages_published: IntCounter,
    pub(crate) bus_messages_received: IntCounter,
    pub(crate) bus_decode_errors: IntCounter,
    pub(crate) messages_delivered: IntCounter,
    pub(crate) delivery_latency: Histogram,
    pub(crate) errors: IntCounterVec,
    pub(crate) disconnects: IntCounterVec,
    pub(crate) bus_up: IntGauge,
    pub(crate) bus_reconnects: IntCounter,
    /// Recoveries (resubscribe every room, catch up from the logs) by reason:
    /// reconnect, moved (cluster slots changed owner), lagged.
    pub(crate) bus_recoveries: IntCounterVec,
    pub(crate) draining: IntGauge,
    /// Publish hook calls by result: allow, rewrite, deny, error (failed or timed out;
    /// `hooks.publish.on_error` decided).
    pub(crate) hook_results: IntCounterVec,
    /// Publish hook round-trip time (answered calls and failures alike).
    pub(crate) hook_duration: Histogram,
    /// Server API requests by endpoint (a fixed set) and HTTP status.
    pub(crate) api_requests: IntCounterVec,
    /// Sends (client `idem` or API `idempotency_key`) answered with an earlier id.
    pub(crate) idempotent_duplicates: IntCounter,
    /// Typing indicators relayed to local members / dropped by the per-user throttle.
    pub(crate) typing_relayed: IntCounter,
    pub(crate) typing_dropped: IntCounter,
    pub(crate) presence_summarised: IntCounter,
    pub(crate) presence_summaries: IntCounter,
    pub(crate) members_pages: IntCounter,
    room_messages: IntCounterVec,
    /// Rooms that have their own label; bounded by `metrics.room_label_cap`.
    labelled_rooms: Mutex<HashSet<String>>,
    room_label_cap: usize,
}

impl Metrics {
    pub(crate) fn new(room_label_cap: usize) -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let delivery_latency = Histogram::with_opts(
            HistogramOpts::new(
                "roomcast_delivery_latency_seconds",
                "Publish time to frame handed to the client's socket, across replicas.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(delivery_latency.clone()))
            .expect("unique metric");
        let hook_duration = Histogram::with_opts(
            HistogramOpts::new(
                "roomcast_hook_duration_seconds",
                "Publish hook round-trip time, failures included.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(hook_duration.clone()))
            .expect("unique metric");
        let api_requests = IntCounterVec::new(
            Opts::new(
                "roomcast_api_requests_total",
                "Server API requests by endpoint and HTTP status.",
            ),
            &["endpoint", "status"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(api_requests.clone()))
            .expect("unique metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "roomcast_build_info",
                "Always 1; the version label tells the build.",
            ),
            &["version"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(build_info.clone()))
            .expect("unique metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let m = Metrics {
            connections: gauge("roomcast_connections", "Open WebSocket connections."),
            connections_total: counter_vec(
                "roomcast_connections_total",
                "WebSocket upgrades by result (accepted, rejected).",
                "result",
            ),
            refused: counter_vec(
                "roomcast_refused_total",
                "Connections refused at the edge or by authorization, by reason.",
                "reason",
            ),
            rooms: gauge("roomcast_rooms", "Rooms with at least one local member."),
            joins: counter("roomcast_joins_total", "Successful joins."),
            leaves: counter("roomcast_leaves_total", "Leaves, including by disconnect."),
            messages_received: counter(
                "roomcast_messages_received_total",
                "Client messages accepted for publishing.",
            ),
            messages_published: counter(
                "roomcast_messages_published_total",
                "Messages this node published to the bus.",
            ),
            bus_messages_received: counter(
                "roomcast_bus_messages_received_total",
                "Messages this node received from the bus.",
            ),
            bus_decode_errors: counter(
                "roomcast_bus_decode_errors_total",
                "Payloads from the bus that could not be decoded and were skipped.",
            ),
            messages_delivered: counter(
                "roomcast_messages_delivered_total",
                "Message frames written to local clients.",
            ),
            delivery_latency,
            errors: counter_vec(
                "roomcast_errors_total",
                "Error frames sent, by protocol error code.",
                "code",
            ),
            disconnects: counter_vec(
                "roomcast_disconnects_total",
                "Closed connections by reason.",
                "reason",
            ),
            bus_up: gauge("roomcast_bus_up", "1 while the bus is connected."),
            bus_reconnects: counter("roomcast_bus_reconnects_total", "Bus reconnections."),
            bus_recoveries: counter_vec(
                "roomcast_bus_recoveries_total",
                "Resubscribe-and-catch-up recoveries by reason (reconnect, moved, lagged).",
                "reason",
            ),
            draining: gauge("roomcast_draining", "1 while this node drains."),
            hook_results: counter_vec(
                "roomcast_hook_requests_total",
                "Publish hook calls by result (allow, rewrite, deny, error).",
                "result",
            ),
            hook_duration,
            api_requests,
            idempotent_duplicates: counter(
                "roomcast_idempotent_duplicates_total",
                "Sends answered with the id of an earlier send with the same idempotency key.",
            ),
            typing_relayed: counter(
                "roomcast_typing_relayed_total",
                "Typing indicators handed to local members' rooms.",
            ),
            typing_dropped: counter(
                "roomcast_typing_dropped_total",
                "Typing indicators dropped by the one-per-user-per-second throttle.",
            ),
            presence_summarised: counter(
                "roomcast_presence_summarised_total",
                "Joins and leaves in rooms above presence.notify_max_members, told in summaries instead of notices.",
            ),
            presence_summaries: counter(
                "roomcast_presence_summaries_total",
                "Presence summaries sent to a room's local members (one per room per summary).",
            ),
            members_pages: counter(
                "roomcast_members_pages_total",
                "Member list pages served (members requests of clients and the server API).",
            ),
            room_messages: counter_vec(
                "roomcast_room_messages_total",
                "Messages received from the bus per room (bounded label set; the rest under _other).",
                "room",
            ),
            labelled_rooms: Mutex::new(HashSet::new()),
            room_label_cap,
            registry,
        };
        // Export every label value from the start so rates and dashboards see zeros.
        for code in ErrorCode::ALL {
            m.errors.with_label_values(&[code.as_str()]);
        }
        for reason in DisconnectReason::ALL {
            m.disconnects.with_label_values(&[reason.as_str()]);
        }
        for result in ["accepted", "rejected"] {
            m.connections_total.with_label_values(&[result]);
        }
        for reason in REFUSED_REASONS {
            m.refused.with_label_values(&[reason]);
        }
        for result in ["allow", "rewrite", "deny", "error"] {
            m.hook_results.with_label_values(&[result]);
        }
        for reason in ["reconnect", "moved", "lagged"] {
            m.bus_recoveries.with_label_values(&[reason]);
        }
        for endpoint in [
            "publish",
            "history",
            "members",
            "rooms",
            "disconnect",
            "kick",
        ] {
            m.api_requests.with_label_values(&[endpoint, "200"]);
        }
        m
    }

    pub(crate) fn error(&self, code: ErrorCode) {
        self.errors.with_label_values(&[code.as_str()]).inc();
    }

    /// Counts a refused connection (or frame) under `roomcast_refused_total{reason}`; the
    /// reason is one of [`REFUSED_REASONS`] (anything else would grow the label set).
    pub(crate) fn refused(&self, reason: &'static str) {
        debug_assert!(REFUSED_REASONS.contains(&reason), "unknown reason {reason}");
        self.refused.with_label_values(&[reason]).inc();
    }

    pub(crate) fn disconnect(&self, reason: DisconnectReason) {
        self.disconnects.with_label_values(&[reason.as_str()]).inc();
    }

    /// The per-room message counter: the room's own label while under the cap, else `_other`.
    pub(crate) fn room_counter(&self, room: &str) -> IntCounter {
        let label = {
            let mut rooms = self
                .labelled_rooms
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if rooms.contains(room) || rooms.len() < self.room_label_cap {
                rooms.insert(room.to_string());
                room
            } else {
                "_other"
            }
        };
        self.room_messages.with_label_values(&[label])
    }

    /// The registry in Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
