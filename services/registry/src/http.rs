//! The HTTP bundle store: `GET|HEAD /functions/{name}` answers the latest
//! bundle with validators, or 304 when the caller's copy is current, so
//! caches can poll cheaply.
//!
//! `GET|HEAD /functions/{name}`: `ETag` `"<version>-<16 hex of sha256>"`,
//! `Last-Modified`, `X-Sock-Version`, `Cache-Control: no-cache`; 304 as
//! RFC 9110 says (If-None-Match wins over If-Modified-Since). 400 for a bad
//! name, 404 for an unknown one, 405 with `Allow: GET, HEAD`; bodies are
//! plain text. `GET|HEAD /functions/{name}/versions/{n}`: exactly version n
//! while it is the current or the previous one (the two the store keeps),
//! with the same validators and `Cache-Control: immutable`; 404 otherwise,
//! naming what is kept. The store wants the node token (or the admin
//! token): bundles hold every function's code and ol.yaml.
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use sock_proto::v1::FunctionInfo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, StartError};
use crate::functions::Functions;
use crate::metrics::Metrics;

/// The version number of the bundle served, for clients that want it
/// without parsing the ETag.
pub(crate) const X_SOCK_VERSION: HeaderName = HeaderName::from_static("x-sock-version");

pub(crate) fn router(functions: Functions) -> Router {
    Router::new()
        .route(
            "/functions/{name}",
            get(bundle).fallback(method_not_allowed),
        )
        .route(
            "/functions/{name}/versions/{version}",
            get(bundle_of_version).fallback(method_not_allowed),
        )
        .fallback(unknown_path)
        .with_state(functions)
        .layer(sock_telemetry::http::ServerTraceLayer)
}

pub(crate) async fn serve(
    functions: Functions,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    tokens: sock_service::Tokens,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    // Bundles hold every function's code and ol.yaml (secrets included):
    // only the cache, with the node token, reads them.
    let app = router(functions)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::count_fetches,
        ))
        .layer(sock_service::AuthLayer::new(tokens, |_| {
            sock_service::Access::Node
        }));
    axum::serve(sock_service::http_incoming(listener), app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(StartError::Http)
}

async fn bundle(
    State(functions): State<Functions>,
    Path(name): Path<String>,
    request: HeaderMap,
) -> Result<Response, Error> {
    let (info, bundle) = functions.latest(name).await?;
    let (validators, modified_secs) = validators(&info);
    if not_modified(&request, &info.etag, modified_secs) {
        return Ok((StatusCode::NOT_MODIFIED, validators).into_response());
    }
    let kind = [
        (CONTENT_TYPE, "application/gzip"),
        (CACHE_CONTROL, "no-cache"),
    ];
    Ok((validators, kind, Bytes::from_owner(bundle)).into_response())
}

/// One version's bundle, as a node asks for the exact version a gateway
/// resolved. A version never changes: no conditional request, and caches
/// may keep the answer.
async fn bundle_of_version(
    State(functions): State<Functions>,
    Path((name, version)): Path<(String, u64)>,
) -> Result<Response, Error> {
    let (info, bundle) = functions.version(name, version).await?;
    let kind = [
        (CONTENT_TYPE, "application/gzip"),
        (CACHE_CONTROL, "immutable"),
    ];
    Ok((validators(&info).0, kind, Bytes::from_owner(bundle)).into_response())
}

/// What a node keeps to revalidate its copy of `info`'s bundle, and its
/// modification time in whole seconds (HTTP dates have no more).
fn validators(info: &FunctionInfo) -> ([(HeaderName, String); 3], u64) {
    let modified_secs = u64::try_from(info.modified_unix_ms / 1000).unwrap_or(0);
    let last_modified = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(modified_secs));
    let validators = [
        (ETAG, info.etag.clone()),
        (LAST_MODIFIED, last_modified),
        (X_SOCK_VERSION, info.version.to_string()),
    ];
    (validators, modified_secs)
}

/// RFC 9110 §13.1.2-3 and §13.2.2: If-None-Match decides when present
/// (weak comparison, so `W/` is ignored); only without it does
/// If-Modified-Since count, at the second precision of HTTP dates.
fn not_modified(request: &HeaderMap, etag: &str, modified_secs: u64) -> bool {
    if request.contains_key(IF_NONE_MATCH) {
        let ours = opaque(etag);
        return request
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .any(|tag| tag == "*" || opaque(tag) == ours);
    }
    let since = request
        .get(IF_MODIFIED_SINCE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| httpdate::parse_http_date(value).ok());
    match since {
        Some(since) => since
            .duration_since(UNIX_EPOCH)
            .is_ok_and(|since| since.as_secs() >= modified_secs),
        // A date we cannot read is ignored, as the RFC asks.
        None => false,
    }
}

/// An entity tag without its weakness prefix and quotes.
fn opaque(tag: &str) -> &str {
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag)
}

async fn method_not_allowed() -> impl IntoResponse {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(ALLOW, "GET, HEAD")],
        "bundles are read-only over HTTP; push with `sock push` (gRPC PushFunction)",
    )
}

async fn unknown_path() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        "not found; bundles are served at /functions/{name}",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETAG_1: &str = "\"1-00112233aabbccdd\"";
    const MODIFIED: u64 = 1_700_000_000;

    fn headers(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), value.parse().expect("header value")))
            .collect()
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn if_none_match_compares_tags_weakly_in_lists() {
        for value in [
            ETAG_1,
            "W/\"1-00112233aabbccdd\"",
            "\"x\", \"1-00112233aabbccdd\"",
            "*",
        ] {
            assert!(
                not_modified(&headers(&[(IF_NONE_MATCH, value)]), ETAG_1, MODIFIED),
                "{value}"
            );
        }
        for value in ["\"2-00112233aabbccdd\"", "\"1-00112233aabbccdd", ""] {
            assert!(
                !not_modified(&headers(&[(IF_NONE_MATCH, value)]), ETAG_1, MODIFIED),
                "{value}"
            );
        }
    }

    #[test]
    fn if_modified_since_counts_whole_seconds() {
        let since = |secs| headers(&[(IF_MODIFIED_SINCE, &date(secs))]);
        assert!(not_modified(&since(MODIFIED), ETAG_1, MODIFIED));
        assert!(not_modified(&since(MODIFIED + 60), ETAG_1, MODIFIED));
        assert!(!not_modified(&since(MODIFIED - 1), ETAG_1, MODIFIED));
        let garbage = headers(&[(IF_MODIFIED_SINCE, "yesterday")]);
        assert!(!not_modified(&garbage, ETAG_1, MODIFIED));
    }

    #[test]
    fn if_none_match_overrides_if_modified_since() {
        let stale_tag = headers(&[
            (IF_NONE_MATCH, "\"0-old\""),
            (IF_MODIFIED_SINCE, &date(MODIFIED)),
        ]);
        assert!(!not_modified(&stale_tag, ETAG_1, MODIFIED));
        let fresh_tag = headers(&[(IF_NONE_MATCH, ETAG_1), (IF_MODIFIED_SINCE, &date(0))]);
        assert!(not_modified(&fresh_tag, ETAG_1, MODIFIED));
    }
}
