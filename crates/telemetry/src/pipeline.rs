//! The OpenTelemetry tracer provider and, when configured, its OTLP/gRPC
//! span export.
//!
//! The SDK's batch processor exports from a dedicated OS thread that
//! drives the export future with a blocking executor, while tonic's
//! channel needs a tokio runtime for its connection tasks. The exporter
//! therefore gets a one-thread runtime of its own: export then works
//! whether or not the caller runs tokio, and the final flush cannot
//! deadlock a current-thread runtime whose only thread is the one waiting
//! for that flush.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};
use tokio::runtime::Runtime;

use crate::settings::Settings;

/// Batch delay when `OTEL_BSP_SCHEDULE_DELAY` is not set. The SDK's 5 s
/// leaves a trace incomplete in Jaeger for noticeably long after a call.
const DEFAULT_SCHEDULE_DELAY: Duration = Duration::from_secs(1);

/// How long dropping the guard may wait for the last spans to leave.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// What can go wrong setting telemetry up. None of it stops a service:
/// it runs on without span export and logs the reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TelemetryError {
    #[error("cannot start the span export runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot export spans to OTLP endpoint {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

pub(crate) struct Pipeline {
    provider: SdkTracerProvider,
    /// Runs the exporter's tonic channel; `None` when nothing is exported.
    runtime: Option<Runtime>,
}

impl Pipeline {
    /// Builds the provider for `settings`. If export cannot be set up, the
    /// pipeline still runs (trace context keeps flowing) and the error is
    /// returned for the caller to log once logging works.
    pub fn start(settings: &Settings) -> (Pipeline, Option<TelemetryError>) {
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .build();
        let builder = SdkTracerProvider::builder().with_resource(resource);
        let Some(endpoint) = &settings.export_to else {
            return (
                Pipeline {
                    provider: builder.build(),
                    runtime: None,
                },
                None,
            );
        };
        match exporter(endpoint) {
            Ok((exporter, runtime)) => {
                let processor = BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch_config())
                    .build();
                let provider = builder.with_span_processor(processor).build();
                (
                    Pipeline {
                        provider,
                        runtime: Some(runtime),
                    },
                    None,
                )
            }
            Err(err) => (
                Pipeline {
                    provider: builder.build(),
                    runtime: None,
                },
                Some(err),
            ),
        }
    }

    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("sock")
    }

    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Flushes what is queued (bounded by `SHUTDOWN_TIMEOUT`) and stops.
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::debug!(%err, "span exporter did not shut down cleanly");
        }
        if let Some(runtime) = self.runtime {
            // Unlike dropping it, this is allowed inside another runtime,
            // where `Telemetry` is usually dropped.
            runtime.shutdown_background();
        }
    }
}

fn exporter(
    endpoint: &str,
) -> Result<(Reporting<opentelemetry_otlp::SpanExporter>, Runtime), TelemetryError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sock-otlp-export")
        .enable_all()
        .build()
        .map_err(TelemetryError::Runtime)?;
    // The lazy channel spawns its worker on the runtime entered here.
    let entered = runtime.enter();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.to_string(),
            source,
        })?;
    drop(entered);
    let reporting = Reporting {
        inner: exporter,
        endpoint: endpoint.to_string(),
        failing: AtomicBool::new(false),
    };
    Ok((reporting, runtime))
}

fn batch_config() -> opentelemetry_sdk::trace::BatchConfig {
    // The builder's defaults already honour every OTEL_BSP_* variable;
    // only the delay's default is ours.
    let builder = BatchConfigBuilder::default();
    match std::env::var_os("OTEL_BSP_SCHEDULE_DELAY") {
        Some(_) => builder.build(),
        None => builder.with_scheduled_delay(DEFAULT_SCHEDULE_DELAY).build(),
    }
}

/// Reports export failures once per outage instead of once per batch, and
/// hides them from the SDK, which would log each at error level. A missing
/// collector must not flood the logs of a service that works fine.
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    endpoint: String,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        match self.inner.export(batch).await {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "span export works again");
                }
            }
            Err(err) => {
                if self.failing.swap(true, Ordering::Relaxed) {
                    tracing::debug!(endpoint = %self.endpoint, %err, spans, "span export failed");
                } else {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        %err,
                        "cannot export spans to the OTLP collector; dropping them until it is reachable"
                    );
                }
            }
        }
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
