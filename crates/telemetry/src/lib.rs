//! Tracing and OpenTelemetry for sock services.
//!
//! `init` installs the subscriber: logs to stderr (filtered by `RUST_LOG`),
//! and spans to OpenTelemetry, exported over OTLP/gRPC when an endpoint is
//! configured. `grpc` and `http` carry W3C trace context across process
//! boundaries so one invocation is one trace.
//!
//! Logs go to stderr at `RUST_LOG` (default `info`); spans at `info` and
//! above reach OpenTelemetry whatever `RUST_LOG` says. Export is OTLP/gRPC,
//! only when `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` is set and
//! `OTEL_SDK_DISABLED` is not `true`; without it spans still get ids, so
//! trace context passes through a service that exports nothing.
//! `service.name` is `OTEL_SERVICE_NAME` or `sock-<service>`; the batch
//! delay is 1 s unless `OTEL_BSP_SCHEDULE_DELAY` says otherwise. A
//! collector outage is logged once (warn), then at debug until it is back.
//! Server spans are named `grpc <path>` (with `rpc.*` attributes) or
//! `HTTP <method> <route>` (the route is axum's `MatchedPath`, so add the
//! layer with `Router::layer`); a successful gRPC call's status code comes
//! in trailers and is not recorded.
#![forbid(unsafe_code)]

pub mod grpc;
pub mod http;
mod pipeline;
mod settings;

use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use pipeline::Pipeline;
use settings::Settings;

/// Flushes and shuts the span exporter down when dropped; keep it alive in
/// `main` for the life of the process.
#[must_use = "dropping the guard stops span export"]
pub struct Telemetry {
    pipeline: Option<Pipeline>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(pipeline) = self.pipeline.take() {
            pipeline.shutdown();
        }
    }
}

/// Installs logging and OpenTelemetry for `service` ("gateway", …; a
/// name that already starts with `sock-` is taken as it is).
///
/// Spans are exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, unless
/// `OTEL_SDK_DISABLED=true`; `service.name` is `OTEL_SERVICE_NAME` or
/// `sock-<service>`. The other `OTEL_EXPORTER_OTLP_*` and `OTEL_BSP_*`
/// variables are honoured. Log level comes from `RUST_LOG` (default
/// `info`); spans at `info` and above are traced whatever `RUST_LOG` says.
/// Works inside or outside a tokio runtime.
pub fn init(service: &'static str) -> Telemetry {
    let settings = Settings::from_env(service, |name| std::env::var(name).ok());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let (pipeline, setup_error) = if settings.sdk_enabled {
        let (pipeline, error) = Pipeline::start(&settings);
        (Some(pipeline), error)
    } else {
        (None, None)
    };
    let spans = pipeline.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer())
            .with_filter(span_filter())
    });
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(log_filter());
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .is_ok();

    if let Some(err) = setup_error {
        tracing::warn!("{err}; spans are not exported");
    }
    let pipeline = match pipeline {
        Some(pipeline) if !installed => {
            tracing::debug!("a tracing subscriber is already installed; keeping it");
            pipeline.shutdown();
            None
        }
        Some(pipeline) => {
            opentelemetry::global::set_tracer_provider(pipeline.provider().clone());
            tracing::debug!(service = %settings.service_name, export_to = ?settings.export_to, "telemetry ready");
            Some(pipeline)
        }
        None => None,
    };
    Telemetry { pipeline }
}

fn log_filter() -> EnvFilter {
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse_lossy(&spec);
    if spec.contains("opentelemetry") {
        return filter;
    }
    // The OpenTelemetry crates announce their own setup at info, and the
    // OTLP exporter warns on every failed batch, while `pipeline` already
    // reports a collector outage once.
    [
        "opentelemetry=warn",
        "opentelemetry_sdk=warn",
        "opentelemetry-otlp=error",
    ]
    .into_iter()
    .fold(filter, |filter, directive| {
        filter.add_directive(directive.parse().expect("a valid static directive"))
    })
}

/// Spans that become OpenTelemetry spans: ours, not those of the transport
/// crates, which would also trace the span export itself.
fn span_filter() -> Targets {
    Targets::new().with_default(LevelFilter::INFO).with_targets(
        ["h2", "hyper", "tonic", "tower", "opentelemetry"].map(|target| (target, LevelFilter::OFF)),
    )
}
