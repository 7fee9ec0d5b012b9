//! An in-process OTLP/gRPC trace receiver, so tests can check which spans
//! the services export and how they link up, without a collector.
//!
//! Start it, point `OTEL_EXPORTER_OTLP_ENDPOINT` at `endpoint()`, and
//! `wait_for` the spans a test expects. Dropping it stops the server.
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

/// One exported span, flattened from OTLP's resource / scope / span nesting.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    /// The resource's `service.name`, e.g. "sock-gateway".
    pub service: String,
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// `None` for a root span.
    pub parent_id: Option<String>,
    pub name: String,
    /// "server", "client", "internal", "producer", "consumer" or
    /// "unspecified".
    pub kind: &'static str,
    /// Every attribute, rendered as a string (`true`, `42`, `text`).
    pub attributes: BTreeMap<String, String>,
    /// Start and end, nanoseconds since the Unix epoch, as the service's
    /// clock saw them.
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
}

impl Span {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// `wait_for` gave up; holds what had arrived, for the failure message.
#[derive(Debug)]
pub struct WaitTimeout {
    pub seen: Vec<Span>,
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the expected spans did not arrive; {} arrived:",
            self.seen.len()
        )?;
        for s in &self.seen {
            writeln!(
                f,
                "  {} {:?} [{}] trace={} span={} parent={}",
                s.service,
                s.name,
                s.kind,
                s.trace_id,
                s.span_id,
                s.parent_id.as_deref().unwrap_or("-")
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for WaitTimeout {}

pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    server: JoinHandle<()>,
}

impl OtlpReceiver {
    /// Serves the OTLP `TraceService` on 127.0.0.1 at a free port. Needs a
    /// tokio runtime.
    pub async fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver on 127.0.0.1");
        let addr = listener
            .local_addr()
            .expect("local address of a bound listener");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let service = TraceServiceServer::new(Collector {
            spans: Arc::clone(&spans),
        });
        let server = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
            if let Err(err) = served {
                eprintln!("OTLP receiver stopped: {err}");
            }
        });
        OtlpReceiver {
            addr,
            spans,
            server,
        }
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().expect("span list lock").clone()
    }

    /// Polls until `pred` holds for the spans received so far and returns
    /// them, or gives up after `timeout`.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&[Span]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Span>, WaitTimeout> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return Ok(spans);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WaitTimeout { seen: spans });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.unwrap_or_default();
            let service = attributes(&resource.attributes)
                .remove("service.name")
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(Span {
                    service: service.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_id: (!span.parent_span_id.is_empty())
                        .then(|| hex::encode(&span.parent_span_id)),
                    kind: kind_name(span.kind),
                    attributes: attributes(&span.attributes),
                    start_unix_ns: span.start_time_unix_nano,
                    end_unix_ns: span.end_time_unix_nano,
                    name: span.name,
                });
            }
        }
        self.spans.lock().expect("span list lock").extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn kind_name(kind: i32) -> &'static str {
    match SpanKind::try_from(kind).unwrap_or(SpanKind::Unspecified) {
        SpanKind::Unspecified => "unspecified",
        SpanKind::Internal => "internal",
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(render).unwrap_or_default(),
            )
        })
        .collect()
}

fn render(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
