//! Everything that can fail in the gateway, and the one place it becomes a
//! gRPC status or an HTTP response.
//!
//! Each failure has a [`Kind`]: a machine-readable name (the
//! `x-sock-error` header and the `error` field of HTTP error bodies), a
//! gRPC code and an HTTP status. A function that raised, timed out, ran out
//! of memory or was killed is an answer on gRPC (`InvokeResponse.error`)
//! but an error response on HTTP, so [`Error::Function`] carries it.
use std::error::Error as _;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sock_proto::v1::{ErrorKind, FunctionError};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Response header (and gRPC metadata) naming the error's [`Kind`].
pub use sock_service::ERROR_HEADER;
/// Response metadata (and HTTP header) carrying the call's id, on answers
/// and errors alike.
pub const CALL_ID_HEADER: &str = "x-sock-call-id";
/// Seconds a client told "overloaded" should wait before trying again.
pub(crate) const RETRY_AFTER_SECS: u32 = 1;

/// The taxonomy users see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The function raised (or returned something that is not JSON).
    Function,
    Timeout,
    OutOfMemory,
    Killed,
    NotFound,
    MethodNotAllowed,
    Overloaded,
    PayloadTooLarge,
    /// sock itself failed: a node, the registry or the cache is down.
    Platform,
    /// Stamped by sock_service's auth layer, before any handler runs.
    Unauthenticated,
    /// The request itself is wrong: a bad name, a zero timeout, a payload
    /// that is not JSON, an f(event) call of a web app.
    InvalidRequest,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Function => "function",
            Kind::Timeout => "timeout",
            Kind::OutOfMemory => "out_of_memory",
            Kind::Killed => "killed",
            Kind::NotFound => "not_found",
            Kind::MethodNotAllowed => "method_not_allowed",
            Kind::Overloaded => "overloaded",
            Kind::PayloadTooLarge => "payload_too_large",
            Kind::Platform => "platform",
            Kind::Unauthenticated => "unauthenticated",
            Kind::InvalidRequest => "invalid_request",
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            Kind::Function | Kind::OutOfMemory | Kind::Killed => StatusCode::INTERNAL_SERVER_ERROR,
            Kind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Platform => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
            Kind::InvalidRequest => StatusCode::BAD_REQUEST,
        }
    }

    /// The code of a failed gRPC call of this kind. Function outcomes are
    /// answers on gRPC; the code is what they would be as statuses.
    pub fn grpc_code(self) -> Code {
        match self {
            Kind::Function | Kind::Killed => Code::Unknown,
            Kind::Timeout => Code::DeadlineExceeded,
            Kind::OutOfMemory | Kind::Overloaded | Kind::PayloadTooLarge => Code::ResourceExhausted,
            Kind::NotFound => Code::NotFound,
            Kind::MethodNotAllowed => Code::FailedPrecondition,
            Kind::Platform => Code::Unavailable,
            Kind::Unauthenticated => Code::Unauthenticated,
            Kind::InvalidRequest => Code::InvalidArgument,
        }
    }

    /// The kind of a function outcome sandboxd reported.
    pub(crate) fn of_function_error(error: &FunctionError) -> Kind {
        match error.kind() {
            ErrorKind::Timeout => Kind::Timeout,
            ErrorKind::OutOfMemory => Kind::OutOfMemory,
            ErrorKind::Killed => Kind::Killed,
            ErrorKind::InvalidPayload => Kind::InvalidRequest,
            ErrorKind::NotFound => Kind::NotFound,
            ErrorKind::MethodNotAllowed => Kind::MethodNotAllowed,
            ErrorKind::Overloaded => Kind::Overloaded,
            ErrorKind::PayloadTooLarge => Kind::PayloadTooLarge,
            ErrorKind::Platform => Kind::Platform,
            ErrorKind::Function | ErrorKind::Unspecified => Kind::Function,
        }
    }
}

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

    pub fn kind(&self) -> Kind {
        match self {
            Error::InvalidName(_) | Error::ZeroTimeout | Error::InvalidRequest(_) => {
                Kind::InvalidRequest
            }
            Error::NotFound(_) => Kind::NotFound,
            Error::MethodNotAllowed { .. } => Kind::MethodNotAllowed,
            Error::PayloadTooLarge { .. } => Kind::PayloadTooLarge,
            Error::Overloaded(_) => Kind::Overloaded,
            Error::DeadlineExceeded { .. } | Error::QueueTimeout { .. } => Kind::Timeout,
            Error::Function(error) => Kind::of_function_error(error),
            Error::Sandboxd(status) => match status.code() {
                Code::InvalidArgument => Kind::InvalidRequest,
                Code::NotFound => Kind::NotFound,
                Code::ResourceExhausted => Kind::Overloaded,
                Code::DeadlineExceeded => Kind::Timeout,
                _ => Kind::Platform,
            },
            Error::Registry(status) => match status.code() {
                Code::InvalidArgument => Kind::InvalidRequest,
                Code::NotFound => Kind::NotFound,
                // The registry's code for a bundle far over its limit.
                Code::ResourceExhausted => Kind::PayloadTooLarge,
                Code::Unauthenticated => Kind::Unauthenticated,
                _ => Kind::Platform,
            },
            Error::RegistryUnavailable(_)
            | Error::SandboxdUnreachable(_)
            | Error::EmptyAnswer(_)
            | Error::InvalidConfig { .. }
            | Error::Serve(_)
            | Error::ServeHttp(_) => Kind::Platform,
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
            && self.kind() == Kind::Platform
    }

    fn grpc_code(&self) -> Code {
        match self {
            Error::Sandboxd(status) => status.code(),
            Error::EmptyAnswer(_)
            | Error::InvalidConfig { .. }
            | Error::Serve(_)
            | Error::ServeHttp(_) => Code::Internal,
            other => other.kind().grpc_code(),
        }
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
                    "error": kind.as_str(),
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
        headers.insert(ERROR_HEADER, HeaderValue::from_static(kind.as_str()));
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
        let mut status = Status::new(error.grpc_code(), error.to_string());
        let metadata = status.metadata_mut();
        metadata.insert(ERROR_HEADER, MetadataValue::from_static(kind.as_str()));
        if kind == Kind::Overloaded {
            metadata.insert("retry-after", MetadataValue::from(RETRY_AFTER_SECS));
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_sandboxd_sent_pass_through_unchanged() {
        let status: Status =
            Error::from_sandboxd(Status::resource_exhausted("node is full: 0 MiB free")).into();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "node is full: 0 MiB free");
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
    fn registry_refusals_keep_their_message_and_get_the_kind_of_their_code() {
        let cases = [
            (
                Status::invalid_argument("bundle is not a gzip-compressed tar archive"),
                Kind::InvalidRequest,
            ),
            (
                Status::not_found("function 'f' does not exist"),
                Kind::NotFound,
            ),
            (
                Status::resource_exhausted("bundle is far over the limit of 32 MiB"),
                Kind::PayloadTooLarge,
            ),
            (
                Status::unauthenticated("missing or wrong admin token"),
                Kind::Unauthenticated,
            ),
            (Status::internal("the registry failed"), Kind::Platform),
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
        assert_eq!(error.kind(), Kind::Platform);
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

    #[test]
    fn every_kind_has_one_code_one_status_and_one_name() {
        let cases = [
            (Kind::Function, Code::Unknown, 500, "function"),
            (Kind::Timeout, Code::DeadlineExceeded, 504, "timeout"),
            (
                Kind::OutOfMemory,
                Code::ResourceExhausted,
                500,
                "out_of_memory",
            ),
            (Kind::Killed, Code::Unknown, 500, "killed"),
            (Kind::NotFound, Code::NotFound, 404, "not_found"),
            (
                Kind::MethodNotAllowed,
                Code::FailedPrecondition,
                405,
                "method_not_allowed",
            ),
            (Kind::Overloaded, Code::ResourceExhausted, 429, "overloaded"),
            (
                Kind::PayloadTooLarge,
                Code::ResourceExhausted,
                413,
                "payload_too_large",
            ),
            (Kind::Platform, Code::Unavailable, 503, "platform"),
            (
                Kind::Unauthenticated,
                Code::Unauthenticated,
                401,
                "unauthenticated",
            ),
            (
                Kind::InvalidRequest,
                Code::InvalidArgument,
                400,
                "invalid_request",
            ),
        ];
        for (kind, code, http, name) in cases {
            assert_eq!(kind.grpc_code(), code, "{kind:?}");
            assert_eq!(kind.http_status().as_u16(), http, "{kind:?}");
            assert_eq!(kind.as_str(), name, "{kind:?}");
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
