//! Everything that can fail in a call through the gateway, and the one
//! place it becomes a gRPC status or an HTTP response; and, apart, what
//! can keep the gateway from starting ([`StartError`]).
//!
//! Each failure has an [`ErrorKind`], whose name (the `x-sock-error`
//! header and the `error` field of HTTP error bodies), gRPC code and HTTP
//! status come from sock_proto's one table. A failure sandboxd or the
//! cache answered keeps the kind they stamped on it. A function that
//! raised, timed out, ran out of memory, was killed or could not start is
//! an answer on gRPC (`InvokeResponse.error`) but an error response on
//! HTTP, so [`Error::Function`] carries it.
//!
//! HTTP error bodies are `{"error","message","call_id"[,"traceback"]}`. A
//! payload too large is RESOURCE_EXHAUSTED (gRPC's code for it; tonic's own
//! OUT_OF_RANGE is rewritten) and HTTP 413 with `connection: close` (the
//! rest of the body is left unread on the connection); overloaded is
//! RESOURCE_EXHAUSTED with `retry-after: 1`; `x-sock-error` tells the two
//! apart. Bad requests are `invalid_request` (400 / INVALID_ARGUMENT).
use std::error::Error as _;

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use sock_proto::v1::{ErrorKind, FunctionError};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Response header (and gRPC metadata) naming the error's [`ErrorKind`].
pub use sock_proto::ERROR_HEADER;
/// Response metadata (and HTTP header) carrying the call's id, on answers
/// and errors alike.
pub const CALL_ID_HEADER: &str = "x-sock-call-id";
/// Seconds a client told "overloaded" should wait before trying again.
pub(crate) const RETRY_AFTER_SECS: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidName(#[from] sock_bundle::BundleError),
    #[error("timeout_ms must be greater than 0; leave it unset for the function's own limit")]
    ZeroTimeout,
    #[error("{0}")]
    InvalidRequest(String),
    #[error("function '{0}' does not exist; push it with `sock push`")]
    NotFound(String),
    /// OpenLambda's words exactly: its clients compare the whole body.
    #[error("HTTP method not allowed. Sent: {method}, Allowed: [{}]", .allowed.join(" "))]
    MethodNotAllowed {
        function: String,
        method: String,
        allowed: Vec<String>,
    },
    #[error("payload of {size} bytes is over the limit of {limit} bytes")]
    PayloadTooLarge { size: u64, limit: u64 },
    #[error("{0}; retry in a moment")]
    Overloaded(String),
    #[error("registry unavailable: {0}")]
    RegistryUnavailable(String),
    #[error("no sandbox node reachable: {0}")]
    SandboxdUnreachable(String),
    /// sandboxd answered the call with a status of its own.
    #[error("{}", .0.message())]
    Sandboxd(Status),
    /// The registry refused an operator's request (`/registry/…`): a bad
    /// bundle, an unknown function, a wrong token.
    #[error("{}", .0.message())]
    Registry(Status),
    #[error("function '{function}' did not answer within its budget of {budget_ms} ms")]
    DeadlineExceeded { function: String, budget_ms: u64 },
    #[error(
        "function '{function}' waited in the gateway's queue until its deadline; it is at its concurrency limit"
    )]
    QueueTimeout { function: String },
    /// The function raised, timed out, ran out of memory or was killed;
    /// an answer on gRPC, an error response on HTTP.
    #[error("{}", .0.message)]
    Function(FunctionError),
    #[error("the sandbox node answered call {0} with neither a result nor an error")]
    EmptyAnswer(String),
}

/// What keeps the gateway from starting or serving: the operator's to
/// fix, never the answer to a call, so it has no [`ErrorKind`].
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid {field} '{value}': {reason}")]
    InvalidConfig {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
    #[error("HTTP server failed: {0}")]
    ServeHttp(#[source] std::io::Error),
}

impl Error {
    /// Classifies a failed sandboxd call: a status sandboxd sent is its
    /// answer and passes through; one the transport made up (it carries
    /// the transport error as its source) means sandboxd was not reached.
    pub(crate) fn from_sandboxd(status: Status) -> Error {
        match status.source() {
            Some(_) => Error::SandboxdUnreachable(reason(&status)),
            None => Error::Sandboxd(status),
        }
    }

    /// Classifies a failed registry admin call, as [`Error::from_sandboxd`]
    /// does a sandboxd call.
    pub(crate) fn from_registry(status: Status) -> Error {
        match status.source() {
            Some(_) => Error::RegistryUnavailable(reason(&status)),
            None => Error::Registry(status),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidName(_) | Error::ZeroTimeout | Error::InvalidRequest(_) => {
                ErrorKind::InvalidRequest
            }
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::MethodNotAllowed { .. } => ErrorKind::MethodNotAllowed,
            Error::PayloadTooLarge { .. } => ErrorKind::PayloadTooLarge,
            Error::Overloaded(_) => ErrorKind::Overloaded,
            Error::DeadlineExceeded { .. } | Error::QueueTimeout { .. } => ErrorKind::Timeout,
            Error::Function(error) => error.kind(),
            // A status sandboxd did not stamp is tonic's own (a message
            // over its limit, say): the platform's.
            Error::Sandboxd(status) => ErrorKind::stamped(status).unwrap_or(ErrorKind::Platform),
            // The registry stamps what it answers, but for a bundle far
            // over its limit, which tonic refuses before the registry sees
            // it.
            Error::Registry(status) => ErrorKind::stamped(status).unwrap_or(match status.code() {
                Code::ResourceExhausted => ErrorKind::PayloadTooLarge,
                _ => ErrorKind::Platform,
            }),
            Error::RegistryUnavailable(_)
            | Error::SandboxdUnreachable(_)
            | Error::EmptyAnswer(_) => ErrorKind::Platform,
        }
    }

    /// Whether the platform failed, as opposed to the caller asking for
    /// something that cannot be done; decides the log level.
    pub(crate) fn is_platform_failure(&self) -> bool {
        matches!(
            self,
            Error::RegistryUnavailable(_)
                | Error::SandboxdUnreachable(_)
                | Error::DeadlineExceeded { .. }
                | Error::EmptyAnswer(_)
        ) || matches!(self, Error::Sandboxd(_) | Error::Registry(_))
            && self.kind() == ErrorKind::Platform
    }

    /// The HTTP error response: the kind's status, `x-sock-error`, the
    /// call id, and a JSON body `{"error", "message", "call_id"}` (plus
    /// `traceback` when the function raised, `Allow` for 405 and
    /// `Retry-After` for 429). A 405's body is OpenLambda's line of text,
    /// as its worker answers and its test scripts expect.
    pub(crate) fn into_http(self, call_id: Option<&str>) -> Response {
        let kind = self.kind();
        let mut response = match &self {
            Error::MethodNotAllowed { .. } => {
                (kind.http_status(), format!("{self}\n")).into_response()
            }
            _ => {
                let mut body = serde_json::json!({
                    "error": kind.name(),
                    "message": self.to_string(),
                });
                if let Some(call_id) = call_id {
                    body["call_id"] = call_id.into();
                }
                if let Error::Function(error) = &self
                    && !error.traceback.is_empty()
                {
                    body["traceback"] = error.traceback.as_str().into();
                }
                (kind.http_status(), axum::Json(body)).into_response()
            }
        };
        let headers = response.headers_mut();
        headers.insert(ERROR_HEADER, HeaderValue::from_static(kind.name()));
        if let Some(value) = call_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            headers.insert(CALL_ID_HEADER, value);
        }
        match &self {
            Error::MethodNotAllowed { allowed, .. } => {
                if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
                    headers.insert(axum::http::header::ALLOW, value);
                }
            }
            Error::Overloaded(_) => {
                headers.insert(
                    axum::http::header::RETRY_AFTER,
                    HeaderValue::from(RETRY_AFTER_SECS),
                );
            }
            // The rest of the body is left unread on the connection, so
            // it cannot carry another request; saying so keeps a client
            // from sending its next one there.
            Error::PayloadTooLarge { .. } => {
                headers.insert(
                    axum::http::header::CONNECTION,
                    HeaderValue::from_static("close"),
                );
            }
            _ => {}
        }
        response
    }
}

/// Why a call failed, in a few words: for a status the transport made up,
/// its innermost cause ("Connection refused (os error 111)"), as the
/// layers above only repeat "transport error"; otherwise its message.
pub(crate) fn reason(status: &Status) -> String {
    let Some(mut cause) = status.source() else {
        return status.message().to_string();
    };
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let kind = error.kind();
        let mut status = kind.status(error.to_string());
        if kind == ErrorKind::Overloaded {
            status
                .metadata_mut()
                .insert("retry-after", MetadataValue::from(RETRY_AFTER_SECS));
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn statuses_sandboxd_stamped_pass_through_unchanged() {
        let status: Status =
            Error::from_sandboxd(ErrorKind::Overloaded.status("node is full: 0 MiB free")).into();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(ErrorKind::stamped(&status), Some(ErrorKind::Overloaded));
        assert_eq!(status.message(), "node is full: 0 MiB free");
    }

    #[test]
    fn a_status_sandboxd_did_not_stamp_is_the_platforms() {
        let status: Status =
            Error::from_sandboxd(Status::out_of_range("decoded message length too large")).into();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(ErrorKind::stamped(&status), Some(ErrorKind::Platform));
    }

    #[test]
    fn transport_failures_say_no_node_was_reached() {
        let mut made_up = Status::unavailable("tcp connect error");
        made_up.set_source(std::sync::Arc::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        )));
        let status: Status = Error::from_sandboxd(made_up).into();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "no sandbox node reachable: Connection refused (os error 111)"
        );
        assert_eq!(
            status.metadata().get(ERROR_HEADER).map(|v| v.as_bytes()),
            Some(&b"platform"[..])
        );
    }

    #[test]
    fn registry_refusals_keep_their_message_and_their_kind() {
        let cases = [
            (
                ErrorKind::InvalidRequest.status("bundle is not a gzip-compressed tar archive"),
                ErrorKind::InvalidRequest,
            ),
            (
                ErrorKind::NotFound.status("function 'f' does not exist"),
                ErrorKind::NotFound,
            ),
            (
                Status::resource_exhausted("bundle is far over the limit of 32 MiB"),
                ErrorKind::PayloadTooLarge,
            ),
            (
                ErrorKind::Unauthenticated.status("missing or wrong admin token"),
                ErrorKind::Unauthenticated,
            ),
            (
                ErrorKind::Platform.status("the registry failed"),
                ErrorKind::Platform,
            ),
            (Status::internal("tonic's own"), ErrorKind::Platform),
        ];
        for (status, kind) in cases {
            let message = status.message().to_string();
            let error = Error::from_registry(status);
            assert_eq!(error.kind(), kind, "{message}");
            assert_eq!(error.to_string(), message);
        }
        let mut made_up = Status::unavailable("tcp connect error");
        made_up.set_source(std::sync::Arc::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        )));
        let error = Error::from_registry(made_up);
        assert_eq!(
            error.to_string(),
            "registry unavailable: Connection refused (os error 111)"
        );
        assert_eq!(error.kind(), ErrorKind::Platform);
    }

    #[test]
    fn unknown_functions_point_at_sock_push() {
        let status: Status = Error::NotFound("hello".into()).into();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(
            status.message(),
            "function 'hello' does not exist; push it with `sock push`"
        );
    }

    #[test]
    fn bad_names_are_invalid_arguments_with_the_reason() {
        let err = sock_bundle::validate_name("Hel lo").expect_err("a space is refused");
        let status: Status = Error::from(err).into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("invalid function name 'Hel lo'"),
            "{}",
            status.message()
        );
    }

    /// Errors of every kind as they start: in the gateway, in a function
    /// (sandboxd's answer), or stamped by sandboxd, the cache behind it or
    /// the registry's auth layer.
    fn one_of_each_kind() -> Vec<(ErrorKind, Error)> {
        let stamped = |kind: ErrorKind| Error::from_sandboxd(kind.status("stamped"));
        let answered = |kind: ErrorKind| {
            Error::Function(FunctionError {
                kind: kind.into(),
                message: "answered".into(),
                traceback: String::new(),
            })
        };
        vec![
            (ErrorKind::Function, answered(ErrorKind::Function)),
            (ErrorKind::Timeout, answered(ErrorKind::Timeout)),
            (
                ErrorKind::Timeout,
                Error::QueueTimeout {
                    function: "f".into(),
                },
            ),
            (ErrorKind::OutOfMemory, answered(ErrorKind::OutOfMemory)),
            (ErrorKind::Killed, answered(ErrorKind::Killed)),
            (ErrorKind::CannotStart, answered(ErrorKind::CannotStart)),
            (ErrorKind::CannotStart, stamped(ErrorKind::CannotStart)),
            (
                ErrorKind::InvalidRequest,
                answered(ErrorKind::InvalidRequest),
            ),
            (ErrorKind::InvalidRequest, Error::ZeroTimeout),
            (
                ErrorKind::InvalidRequest,
                stamped(ErrorKind::InvalidRequest),
            ),
            (ErrorKind::NotFound, Error::NotFound("f".into())),
            (ErrorKind::NotFound, stamped(ErrorKind::NotFound)),
            (
                ErrorKind::MethodNotAllowed,
                Error::MethodNotAllowed {
                    function: "f".into(),
                    method: "PUT".into(),
                    allowed: vec!["GET".into()],
                },
            ),
            (
                ErrorKind::PayloadTooLarge,
                Error::PayloadTooLarge { size: 2, limit: 1 },
            ),
            (
                ErrorKind::Unauthenticated,
                Error::from_registry(ErrorKind::Unauthenticated.status("no token")),
            ),
            (ErrorKind::Overloaded, Error::Overloaded("full".into())),
            (ErrorKind::Overloaded, stamped(ErrorKind::Overloaded)),
            (ErrorKind::Platform, stamped(ErrorKind::Platform)),
            (ErrorKind::Platform, Error::EmptyAnswer("c".into())),
        ]
    }

    #[test]
    fn every_kind_reaches_both_edges_with_the_tables_code_status_and_name() {
        let cases = one_of_each_kind();
        for kind in ErrorKind::every() {
            assert!(cases.iter().any(|(k, _)| *k == kind), "no case of {kind:?}");
        }
        for ((kind, grpc), (_, http)) in cases.into_iter().zip(one_of_each_kind()) {
            assert_eq!(grpc.kind(), kind, "{grpc:?}");
            let status = Status::from(grpc);
            assert_eq!(status.code(), kind.grpc_code(), "{kind:?}");
            assert_eq!(ErrorKind::stamped(&status), Some(kind));
            let response = http.into_http(None);
            assert_eq!(response.status(), kind.http_status(), "{kind:?}");
            assert_eq!(response.headers()[ERROR_HEADER], kind.name());
        }
    }

    #[tokio::test]
    async fn http_errors_are_json_with_kind_header_and_hints() {
        let error = Error::MethodNotAllowed {
            function: "f".into(),
            method: "DELETE".into(),
            allowed: vec!["GET".into(), "POST".into()],
        };
        let response = error.into_http(Some("c1"));
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()["allow"], "GET, POST");
        assert_eq!(response.headers()[ERROR_HEADER], "method_not_allowed");
        assert_eq!(response.headers()[crate::CALL_ID_HEADER], "c1");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        assert_eq!(
            body,
            "HTTP method not allowed. Sent: DELETE, Allowed: [GET POST]\n"
        );

        let response = Error::Overloaded("too many calls".into()).into_http(None);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "1");

        let response = Error::PayloadTooLarge { size: 2, limit: 1 }.into_http(None);
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()["connection"], "close");

        let raised = Error::Function(FunctionError {
            kind: ErrorKind::Function.into(),
            message: "ZeroDivisionError: division by zero".into(),
            traceback: "Traceback ...".into(),
        });
        let response = raised.into_http(Some("c2"));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[ERROR_HEADER], "function");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(body["traceback"], "Traceback ...");
    }
}
