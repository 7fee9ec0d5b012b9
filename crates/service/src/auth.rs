//! Who may call a service: bearer tokens checked by one tower layer in
//! front of every server (gRPC and HTTP alike), the peer-credential check
//! of a unix socket, and the client side that sends a token.
//!
//! Three tokens, each optional per service: `invoke` (calling functions),
//! `admin` (changing or reading what is deployed, logs, metrics) and
//! `node` (sock's own services calling each other). A service names, per
//! request path, which [`Access`] it needs; a path whose tokens are all
//! unset is open, so a service with no tokens at all must not listen
//! where others can reach it ([`require_tokens`]). Health and reflection
//! stay open for probes.
//!
//! Tokens are compared in constant time. A wrong or missing token is
//! UNAUTHENTICATED (HTTP 401) with `x-sock-error: unauthenticated`, and the
//! message says which token is wanted and where an operator finds it
//! (`sock up`: `<data dir>/tokens/`; compose: the secrets volume). The
//! admin token also passes where the node token is asked.
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::IntoResponse;
use http::{HeaderMap, HeaderValue, Request, Response};
use sock_proto::ERROR_HEADER;
use sock_proto::v1::ErrorKind;
use tower::{Layer, Service};

/// A token in a service's config: read like a string, never printed (the
/// effective config is logged).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for Secret {
    fn from(token: &str) -> Self {
        Secret(token.to_string())
    }
}

impl From<String> for Secret {
    fn from(token: String) -> Self {
        Secret(token)
    }
}

/// What a request path needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Health checks, reflection.
    Open,
    /// Calling functions: the invoke token.
    Invoke,
    /// The operator: the admin token.
    Admin,
    /// sock's services calling each other: the node token, or the admin
    /// token (an operator may read what a node reads).
    Node,
}

impl Access {
    fn what(self) -> &'static str {
        match self {
            Access::Open => "no",
            Access::Invoke => "invoke",
            Access::Admin => "admin",
            Access::Node => "node",
        }
    }
}

/// The tokens one service accepts; unset ones grant nothing.
#[derive(Clone, Default)]
pub struct Tokens {
    invoke: Option<Arc<str>>,
    admin: Option<Arc<str>>,
    node: Option<Arc<str>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |t: &Option<Arc<str>>| t.is_some();
        f.debug_struct("Tokens")
            .field("invoke", &set(&self.invoke))
            .field("admin", &set(&self.admin))
            .field("node", &set(&self.node))
            .finish()
    }
}

impl Tokens {
    /// Empty tokens count as unset (as an empty `SOCK_*_TOKEN` gives).
    pub fn new(invoke: Option<&Secret>, admin: Option<&Secret>, node: Option<&Secret>) -> Tokens {
        let token = |t: Option<&Secret>| {
            t.map(Secret::expose)
                .filter(|t| !t.is_empty())
                .map(Arc::from)
        };
        Tokens {
            invoke: token(invoke),
            admin: token(admin),
            node: token(node),
        }
    }

    /// Whether any token is set.
    pub fn any(&self) -> bool {
        self.invoke.is_some() || self.admin.is_some() || self.node.is_some()
    }

    /// The tokens that grant `access` (set or not); none set = open.
    fn granting(&self, access: Access) -> [Option<&str>; 2] {
        match access {
            Access::Open => [None, None],
            Access::Invoke => [self.invoke.as_deref(), None],
            Access::Admin => [self.admin.as_deref(), None],
            Access::Node => [self.node.as_deref(), self.admin.as_deref()],
        }
    }

    /// Whether `headers` may have `access`. On every request: allocates
    /// nothing.
    pub fn allows(&self, access: Access, headers: &HeaderMap) -> bool {
        let granting = self.granting(access);
        granting.iter().all(Option::is_none)
            || granting
                .iter()
                .flatten()
                .any(|token| carries(headers, token))
    }
}

/// Refuses to serve on `addr` with no token at all unless it is a
/// loopback address: anything else would let the network in unasked.
pub fn require_tokens(service: &str, addr: SocketAddr, tokens: &Tokens) -> Result<(), String> {
    if tokens.any() || addr.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "refusing to serve {service} on {addr} without tokens: anyone who can reach it could \
         call it; set its admin_token and node_token (`sock up` and compose generate them), or \
         listen on a loopback address"
    ))
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

/// The refusal's words: which token, and where an operator finds it.
fn refusal_message(access: Access) -> String {
    let file = match access {
        Access::Node => "node",
        Access::Invoke => "invoke",
        _ => "admin",
    };
    format!(
        "missing or wrong {} token: send it as `authorization: Bearer <token>`; `sock up` keeps \
         it in <data dir>/tokens/{file} (the CLI reads it from there), compose in the \
         sock-secrets volume",
        access.what()
    )
}

/// How a refusal is written for the server the layer guards.
pub trait Refusal: Sized {
    fn unauthenticated(grpc: bool, message: String) -> Self;
}

impl Refusal for Response<tonic::body::Body> {
    fn unauthenticated(_: bool, message: String) -> Self {
        ErrorKind::Unauthenticated.status(message).into_http()
    }
}

impl Refusal for Response<axum::body::Body> {
    fn unauthenticated(grpc: bool, message: String) -> Self {
        let kind = ErrorKind::Unauthenticated;
        if grpc {
            return kind.status(message).into_http::<axum::body::Body>();
        }
        let body = axum::Json(serde_json::json!({
            "error": kind.name(),
            "message": message,
        }));
        let mut response = (kind.http_status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        headers.insert(ERROR_HEADER, HeaderValue::from_static(kind.name()));
        response
    }
}

/// Checks every request against `tokens` for what `policy` says its path
/// needs.
#[derive(Clone)]
pub struct AuthLayer {
    tokens: Tokens,
    policy: fn(&str) -> Access,
}

impl AuthLayer {
    pub fn new(tokens: Tokens, policy: fn(&str) -> Access) -> Self {
        AuthLayer { tokens, policy }
    }
}

/// A check that admits a request or says why not; [`Guarded`] runs it in
/// front of a service.
pub trait Guard: Clone {
    fn admit<B>(&self, request: &mut Request<B>) -> Result<(), String>;
}

impl Guard for AuthLayer {
    fn admit<B>(&self, request: &mut Request<B>) -> Result<(), String> {
        let access = (self.policy)(request.uri().path());
        let admitted = request.extensions().get::<PeerAdmitted>().is_some();
        if admitted || self.tokens.allows(access, request.headers()) {
            Ok(())
        } else {
            Err(refusal_message(access))
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Guarded<S, AuthLayer>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }
}

/// `inner` behind `guard`: a refused request is answered UNAUTHENTICATED
/// (401 over plain HTTP) and never reaches it.
#[derive(Clone)]
pub struct Guarded<S, G> {
    inner: S,
    guard: G,
}

impl<S, G, B> Service<Request<B>> for Guarded<S, G>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Response: Refusal + Send,
    S::Future: Send,
    G: Guard,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if let Err(message) = self.guard.admit(&mut request) {
            let grpc = is_grpc(request.headers());
            return Box::pin(async move { Ok(S::Response::unauthenticated(grpc, message)) });
        }
        // The clone that was polled ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(request))
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Set on a request whose unix peer [`PeerCredLayer`] admitted: its
/// credentials are its authentication, so [`AuthLayer`] asks no token.
#[derive(Clone, Copy, Debug)]
struct PeerAdmitted;

/// The uids and gids a unix socket server accepts, besides root: checked
/// on the peer credentials of each connection (`SO_PEERCRED`), so a
/// socket file whose mode was loosened still lets no one else in.
#[derive(Clone, Debug, Default)]
pub struct PeerCredLayer {
    uid: Option<u32>,
    gid: Option<u32>,
}

impl PeerCredLayer {
    pub fn new(uid: Option<u32>, gid: Option<u32>) -> Self {
        PeerCredLayer { uid, gid }
    }

    fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || Some(uid) == self.uid || Some(gid) == self.gid
    }

    fn refusal(&self, uid: u32, gid: u32) -> String {
        let mut allowed = vec!["uid 0".to_string()];
        allowed.extend(self.uid.map(|u| format!("uid {u}")));
        allowed.extend(self.gid.map(|g| format!("gid {g}")));
        format!(
            "this socket answers only {}; the caller is uid {uid} gid {gid}",
            allowed.join(", ")
        )
    }
}

impl Guard for PeerCredLayer {
    fn admit<B>(&self, request: &mut Request<B>) -> Result<(), String> {
        // Only unix connections carry this; TCP ones are left to the
        // token check.
        let peer = request
            .extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
            .map(|info| info.peer_cred.map(|c| (c.uid(), c.gid())));
        match peer {
            None => Ok(()),
            Some(None) => Err("the caller's credentials are unknown".to_string()),
            Some(Some((uid, gid))) if !self.allows(uid, gid) => Err(self.refusal(uid, gid)),
            Some(Some(_)) => {
                request.extensions_mut().insert(PeerAdmitted);
                Ok(())
            }
        }
    }
}

impl<S> Layer<S> for PeerCredLayer {
    type Service = Guarded<S, PeerCredLayer>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }
}

/// A client channel that sends `authorization: Bearer <token>` with every
/// request (when it has a token).
#[derive(Clone, Debug)]
pub struct Bearer<S> {
    inner: S,
    value: Option<HeaderValue>,
}

impl<S> Bearer<S> {
    /// Fails when the token is not a valid header value.
    pub fn new(inner: S, token: Option<&Secret>) -> Result<Self, String> {
        let value = match token.map(Secret::expose).filter(|t| !t.is_empty()) {
            None => None,
            Some(token) => {
                let mut value = HeaderValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| "a token must be printable ASCII".to_string())?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Bearer { inner, value })
    }
}

impl<S, B> Service<Request<B>> for Bearer<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if let Some(value) = &self.value {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value.clone());
        }
        self.inner.call(request)
    }
}

/// A traced client channel that carries a token: what every sock service
/// uses to call another.
pub type AuthedChannel = Bearer<sock_telemetry::grpc::TracedChannel>;

/// `channel`, traced, sending `token` (none or empty: no header).
pub fn authed(
    channel: tonic::transport::Channel,
    token: Option<&Secret>,
) -> Result<AuthedChannel, String> {
    Bearer::new(sock_telemetry::grpc::traced(channel), token)
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
    fn each_access_takes_its_own_tokens() {
        let secret = |t: &str| Some(Secret::from(t));
        let tokens = Tokens::new(
            secret("call").as_ref(),
            secret("admin").as_ref(),
            secret("node").as_ref(),
        );
        let with = |t: &str| headers(&format!("Bearer {t}"));
        assert!(tokens.allows(Access::Invoke, &with("call")));
        assert!(!tokens.allows(Access::Invoke, &with("admin")));
        assert!(tokens.allows(Access::Admin, &with("admin")));
        assert!(!tokens.allows(Access::Admin, &with("node")));
        assert!(tokens.allows(Access::Node, &with("node")));
        assert!(tokens.allows(Access::Node, &with("admin")));
        assert!(!tokens.allows(Access::Node, &with("call")));
        assert!(!tokens.allows(Access::Node, &HeaderMap::new()));
        assert!(tokens.allows(Access::Open, &HeaderMap::new()));
        // Unset tokens (or empty ones) leave their paths open.
        let none = Tokens::new(None, secret("").as_ref(), None);
        assert!(!none.any());
        assert!(none.allows(Access::Admin, &HeaderMap::new()));
    }

    #[test]
    fn a_service_without_tokens_stays_on_loopback() {
        let none = Tokens::default();
        let some = Tokens::new(None, Some(&Secret::from("a")), None);
        let public: SocketAddr = "0.0.0.0:7071".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:7071".parse().expect("addr");
        assert!(require_tokens("the registry", local, &none).is_ok());
        assert!(require_tokens("the registry", public, &some).is_ok());
        let err = require_tokens("the registry", public, &none).expect_err("refused");
        assert!(
            err.contains("refusing to serve the registry on 0.0.0.0:7071"),
            "{err}"
        );
    }

    #[test]
    fn refusals_say_where_the_token_lives() {
        let message = refusal_message(Access::Admin);
        assert!(
            message.contains("missing or wrong admin token"),
            "{message}"
        );
        assert!(message.contains("tokens/admin"), "{message}");
    }

    #[test]
    fn peer_credentials_allow_root_and_the_named_ids() {
        let layer = PeerCredLayer::new(Some(1000), Some(50));
        assert!(layer.allows(0, 0));
        assert!(layer.allows(1000, 1000));
        assert!(layer.allows(1234, 50));
        assert!(!layer.allows(1234, 1234));
        let message = layer.refusal(1234, 1234);
        assert!(
            message.contains("uid 0, uid 1000, gid 50; the caller is uid 1234"),
            "{message}"
        );
    }
}
