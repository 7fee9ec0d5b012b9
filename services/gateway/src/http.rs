//! OpenLambda-compatible HTTP: `ANY /run/<name>[/<path>]`, OpenLambda's
//! `/status` and `/registry` (in `openlambda`), and `/metrics`.
//!
//! For an f(event) function the body is the JSON event and the JSON result
//! is the answer (200, `application/json`). A WSGI/ASGI app gets the
//! method, the path below `/run/<name>`, the query, the headers and the
//! body, and its status, headers and body come back unchanged. Errors are
//! JSON `{"error": kind, "message", "call_id"}` with `x-sock-error`.
//! With an invoke token configured, the caller's `authorization` is the
//! platform's and is not forwarded to apps.
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use sock_proto::v1::{HttpHeader, HttpRequest, HttpResponse};
use tracing::Instrument;

use crate::CALL_ID_HEADER;
use crate::body::read_body;
use crate::error::Error;
use crate::grpc::{call_span, log_failure};
use crate::invoke::{Invocation, Invoker, Outcome};
use crate::metrics::Metrics;
use crate::nodes::Nodes;
use crate::openlambda::{self, OpenLambda};

/// Request header with the caller's budget in milliseconds (the HTTP
/// counterpart of a gRPC deadline).
pub const TIMEOUT_HEADER: &str = "x-sock-timeout-ms";

pub(crate) struct HttpState {
    pub invoker: Arc<Invoker>,
    pub nodes: Arc<Nodes>,
    pub metrics: Arc<Metrics>,
    /// With an invoke token, `authorization` is the platform's and is not
    /// passed on to apps.
    pub strip_authorization: bool,
}

pub(crate) fn router(state: Arc<HttpState>, openlambda: Arc<OpenLambda>) -> Router {
    Router::new()
        .route("/run/{name}", any(run_root))
        .route("/run/{name}/", any(run_root))
        .route("/run/{name}/{*path}", any(run_path))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(openlambda::router(openlambda))
}

async fn run_root(
    State(state): State<Arc<HttpState>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    run(&state, name, String::new(), request).await
}

async fn run_path(
    State(state): State<Arc<HttpState>>,
    Path((name, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    run(&state, name, path, request).await
}

async fn run(state: &HttpState, function: String, path: String, request: Request) -> Response {
    let (call_id, span) = call_span(&function, "http");
    let method = request.method().clone();
    let result = async {
        let invocation = http_invocation(
            function,
            &path,
            request,
            state.invoker.max_payload_bytes(),
            state.strip_authorization,
        )
        .await?;
        state
            .invoker
            .invoke(invocation, Some(method.as_str()), &call_id)
            .await
    }
    .instrument(span.clone())
    .await;
    let answer = result.and_then(|answer| match answer.outcome {
        Outcome::Result(json) => Ok(json_response(json)),
        Outcome::Http(response) => Ok(app_response(response)),
        Outcome::Error(error) => Err(Error::Function(error)),
    });
    match answer {
        Ok(mut response) => {
            if let Ok(value) = HeaderValue::from_str(&call_id) {
                response.headers_mut().insert(CALL_ID_HEADER, value);
            }
            response
        }
        Err(error) => {
            log_failure(&span, &error);
            error.into_http(Some(&call_id))
        }
    }
}

/// The call a `/run/<function>/<path>` request asks for, as routed: its
/// budget (`x-sock-timeout-ms`), its body within `max_payload_bytes`, and
/// what an app gets of it. With `strip_authorization` the caller's
/// `authorization` is the platform's and stays here. Public for the fuzzer
/// (`fuzz/`), which holds this mapping of hostile requests to its
/// invariants.
pub async fn http_invocation(
    function: String,
    path: &str,
    request: Request,
    max_payload_bytes: u64,
    strip_authorization: bool,
) -> Result<Invocation, Error> {
    let (parts, body) = request.into_parts();
    let timeout_ms = timeout_header(&parts.headers)?;
    let payload = read_body(&parts.headers, body, max_payload_bytes).await?;
    let http = HttpRequest {
        method: parts.method.to_string(),
        path: format!("/{path}"),
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers: forwarded_headers(&parts.headers, strip_authorization),
        root_path: format!("/run/{function}"),
    };
    Ok(Invocation {
        function,
        payload,
        timeout_ms,
        deadline_left: None,
        http: Some(http),
    })
}

fn timeout_header(headers: &HeaderMap) -> Result<Option<u32>, Error> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map(Some)
        .ok_or_else(|| {
            Error::InvalidRequest(format!(
                "{TIMEOUT_HEADER} must be a whole number of milliseconds"
            ))
        })
}

/// Hop-by-hop headers belong to one connection, not to the request.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
    )
}

fn forwarded_headers(headers: &HeaderMap, strip_authorization: bool) -> Vec<HttpHeader> {
    headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name))
        .filter(|(name, _)| !(strip_authorization && *name == header::AUTHORIZATION))
        .map(|(name, value)| HttpHeader {
            name: name.to_string(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        })
        .collect()
}

fn json_response(json: Vec<u8>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(json),
    )
        .into_response()
}

/// The app's answer as it gave it; headers that are not valid HTTP are
/// dropped, and a status out of range is the app's error.
fn app_response(answer: HttpResponse) -> Response {
    let status = u16::try_from(answer.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok());
    let Some(status) = status else {
        return Error::Function(sock_proto::v1::FunctionError {
            kind: sock_proto::v1::ErrorKind::Function.into(),
            message: format!(
                "the app answered with an invalid HTTP status {}",
                answer.status
            ),
            traceback: String::new(),
        })
        .into_http(None);
    };
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for h in answer.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) && !is_hop_by_hop(&name)
        {
            headers.append(name, value);
        }
    }
    response
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let nodes = state.nodes.all();
    let healthy = nodes.iter().filter(|n| n.is_healthy()).count();
    let text = state
        .metrics
        .render(state.invoker.queue_depth(), nodes.len(), healthy);
    (
        [(header::CONTENT_TYPE, sock_service::METRICS_CONTENT_TYPE)],
        text,
    )
        .into_response()
}
