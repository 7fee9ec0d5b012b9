//! Bearer tokens, as a tower layer in front of both servers.
//!
//! Calls (`Gateway/Invoke`, `/run/…`) need `invoke_token` and the admin
//! surface (`Gateway/Logs`, `/metrics`) needs `admin_token`, each only when
//! configured; health and reflection stay open for probes. A missing or
//! wrong token is UNAUTHENTICATED (gRPC) or 401 (HTTP).
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::IntoResponse;
use http::{HeaderMap, Request, Response};
use tower::{Layer, Service};

use crate::error::Error;

#[derive(Clone, Debug, Default)]
pub(crate) struct AuthLayer {
    invoke: Option<Arc<str>>,
    admin: Option<Arc<str>>,
}

impl AuthLayer {
    pub fn new(invoke: Option<&str>, admin: Option<&str>) -> Self {
        AuthLayer {
            invoke: invoke.map(Into::into),
            admin: admin.map(Into::into),
        }
    }

    /// The token a request to `path` must carry, if any.
    fn required(&self, path: &str) -> Option<&str> {
        match path {
            "/sock.v1.Gateway/Invoke" => self.invoke.as_deref(),
            "/sock.v1.Gateway/Logs" | "/metrics" => self.admin.as_deref(),
            p if p.starts_with("/run/") => self.invoke.as_deref(),
            _ => None,
        }
    }
}

/// Whether `headers` carry `authorization: Bearer <token>`.
fn carries(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Compared in constant time, so the answer's timing does not tell how
    // much of a guess was right.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// How a refusal is written for the server the layer guards.
pub(crate) trait Refusal: Sized {
    fn unauthenticated(grpc: bool) -> Self;
}

impl Refusal for Response<tonic::body::Body> {
    fn unauthenticated(_: bool) -> Self {
        tonic::Status::from(Error::Unauthenticated).into_http()
    }
}

impl Refusal for Response<axum::body::Body> {
    fn unauthenticated(grpc: bool) -> Self {
        if grpc {
            return tonic::Status::from(Error::Unauthenticated).into_http::<axum::body::Body>();
        }
        let mut response = Error::Unauthenticated.into_http(None).into_response();
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        response
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            tokens: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Auth<S> {
    inner: S,
    tokens: AuthLayer,
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Response: Refusal + Send,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let allowed = self
            .tokens
            .required(request.uri().path())
            .is_none_or(|token| carries(request.headers(), token));
        if !allowed {
            let grpc = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            return Box::pin(async move { Ok(S::Response::unauthenticated(grpc)) });
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            authorization.parse().expect("header"),
        );
        headers
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        assert!(carries(&headers("Bearer s3cret"), "s3cret"));
        assert!(!carries(&headers("Bearer s3cre"), "s3cret"));
        assert!(!carries(&headers("Bearer s3cretX"), "s3cret"));
        assert!(!carries(&headers("Basic s3cret"), "s3cret"));
        assert!(!carries(&HeaderMap::new(), "s3cret"));
    }

    #[test]
    fn calls_and_admin_paths_need_their_own_tokens() {
        let auth = AuthLayer::new(Some("call"), Some("admin"));
        assert_eq!(auth.required("/sock.v1.Gateway/Invoke"), Some("call"));
        assert_eq!(auth.required("/run/echo/x"), Some("call"));
        assert_eq!(auth.required("/sock.v1.Gateway/Logs"), Some("admin"));
        assert_eq!(auth.required("/metrics"), Some("admin"));
        assert_eq!(auth.required("/grpc.health.v1.Health/Check"), None);
        let open = AuthLayer::new(None, None);
        assert_eq!(open.required("/run/echo"), None);
    }
}
