//! Telemetry: the `tracing` subscriber (text or JSON logs, level from `log.level` or
//! `RUST_LOG`) and, when an OTLP endpoint is configured, span export over OTLP/HTTP
//! (opentelemetry-otlp + tracing-opentelemetry). The W3C trace context travels inside
//! bus envelopes, so a message's fan-out span on another replica joins the sender's trace.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// True once spans are exported; envelopes carry a trace context only then.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Flushes exported spans when the process ends (see [`Telemetry::shutdown`]).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.force_flush() {
                eprintln!("roomcast: flushing traces failed: {e}");
            }
            let _ = provider.shutdown();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("otel.endpoint: {0}")]
    Exporter(String),
    #[error("log.level: {0}")]
    Filter(String),
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Installs the global subscriber. Call once per process.
pub fn init(config: &Config) -> Result<Telemetry, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(&config.log.level),
    }
    .map_err(|e| TelemetryError::Filter(e.to_string()))?;
    let fmt = match config.log.format {
        // Colour only on a terminal: escape codes in a log file or collector are noise.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    };
    let (otel, provider) = match &config.otel.endpoint {
        Some(endpoint) => {
            let provider = tracer_provider(endpoint, &config.otel.service_name, config.node_id())?;
            let tracer = provider.tracer("roomcast");
            EXPORTING.store(true, Ordering::Release);
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
            )
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(Telemetry { provider })
}

/// An OTLP/HTTP tracer provider sending to `{endpoint}/v1/traces`.
pub fn tracer_provider(
    endpoint: &str,
    service_name: &str,
    instance: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    // reqwest is built without a default TLS crypto provider (the JWKS client picks ring
    // itself); the exporter's client looks for the process default, so install ring
    // (a second call is a no-op).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_string())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance.to_string(),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Marks span export as on (for processes that install their own subscriber, e.g. tests).
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Release);
}

/// The W3C `traceparent` of `span`, when spans are exported.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !EXPORTING.load(Ordering::Acquire) {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote context in `traceparent`.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}
