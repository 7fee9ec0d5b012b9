//! Trace context over gRPC: a server layer that continues the caller's
//! trace, and a client interceptor that sends the current one along.
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A tonic channel whose requests carry the current trace context.
pub type TracedChannel = InterceptedService<Channel, ContextInjector>;

/// Wraps a channel so every request carries the current span's context.
pub fn traced(channel: Channel) -> TracedChannel {
    InterceptedService::new(channel, ContextInjector)
}

/// Client interceptor injecting W3C `traceparent` into request metadata.
#[derive(Clone, Copy, Debug, Default)]
pub struct ContextInjector;

impl tonic::service::Interceptor for ContextInjector {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        crate::http::inject_context(request.metadata_mut().as_mut());
        Ok(request)
    }
}

/// Server layer: every request runs in a span that continues the trace in
/// its headers (gRPC metadata are HTTP/2 headers, so this also serves the
/// HTTP servers).
pub use crate::http::ServerTraceLayer;
