//! sock's one table of error kinds: for each [`ErrorKind`], the name
//! `x-sock-error` carries, the gRPC code, the HTTP status and the `sock`
//! exit code. Where an error starts it becomes a status of its kind
//! ([`ErrorKind::status`]); every hop after that reads the stamp
//! ([`ErrorKind::stamped`]) instead of guessing a kind from a code.
use tonic::codegen::http::StatusCode;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::v1::ErrorKind;

/// The header (and gRPC metadata key) naming the kind of a sock error, so
/// clients tell errors that share a code or status apart.
pub const ERROR_HEADER: &str = "x-sock-error";

/// How one kind of error shows at each edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// The `x-sock-error` value, and the `error` field of HTTP bodies.
    pub name: &'static str,
    /// A failed gRPC call's code. Function outcomes are answers on gRPC;
    /// the code is what they would be as statuses.
    pub code: Code,
    pub http: StatusCode,
    /// What `sock` exits with.
    pub exit: u8,
}

const EXIT_FUNCTION: u8 = 1;
/// The CLI's own errors (a file it cannot read, bad arguments) exit with
/// this too.
pub const EXIT_REQUEST: u8 = 2;
const EXIT_CANNOT_START: u8 = 3;
const EXIT_PLATFORM: u8 = 4;

/// What each exit code of `sock` but 0 says, for its --help.
pub const EXIT_MEANINGS: [(u8, &str); 4] = [
    (EXIT_FUNCTION, "the function failed while it ran"),
    (
        EXIT_REQUEST,
        "the request was wrong (so are the CLI's own errors): fix it and ask again",
    ),
    (
        EXIT_CANNOT_START,
        "the function cannot start: fix it and push it again",
    ),
    (
        EXIT_PLATFORM,
        "sock could not serve the call now: try again later",
    ),
];

impl ErrorKind {
    /// The one table.
    pub fn row(self) -> Row {
        let row = |name, code, http, exit| Row {
            name,
            code,
            http,
            exit,
        };
        match self {
            // A function error that names no kind (a peer newer than this
            // one) is still the function's.
            ErrorKind::Function | ErrorKind::Unspecified => row(
                "function",
                Code::Unknown,
                StatusCode::INTERNAL_SERVER_ERROR,
                EXIT_FUNCTION,
            ),
            ErrorKind::Timeout => row(
                "timeout",
                Code::DeadlineExceeded,
                StatusCode::GATEWAY_TIMEOUT,
                EXIT_FUNCTION,
            ),
            ErrorKind::OutOfMemory => row(
                "out_of_memory",
                Code::ResourceExhausted,
                StatusCode::INTERNAL_SERVER_ERROR,
                EXIT_FUNCTION,
            ),
            ErrorKind::Killed => row(
                "killed",
                Code::Unknown,
                StatusCode::INTERNAL_SERVER_ERROR,
                EXIT_FUNCTION,
            ),
            // The caller's request is fine and retrying will not help: a
            // 5xx that is not 503.
            ErrorKind::CannotStart => row(
                "cannot_start",
                Code::FailedPrecondition,
                StatusCode::INTERNAL_SERVER_ERROR,
                EXIT_CANNOT_START,
            ),
            ErrorKind::NotFound => row(
                "not_found",
                Code::NotFound,
                StatusCode::NOT_FOUND,
                EXIT_REQUEST,
            ),
            ErrorKind::MethodNotAllowed => row(
                "method_not_allowed",
                Code::FailedPrecondition,
                StatusCode::METHOD_NOT_ALLOWED,
                EXIT_REQUEST,
            ),
            ErrorKind::PayloadTooLarge => row(
                "payload_too_large",
                Code::ResourceExhausted,
                StatusCode::PAYLOAD_TOO_LARGE,
                EXIT_REQUEST,
            ),
            ErrorKind::InvalidRequest => row(
                "invalid_request",
                Code::InvalidArgument,
                StatusCode::BAD_REQUEST,
                EXIT_REQUEST,
            ),
            ErrorKind::Unauthenticated => row(
                "unauthenticated",
                Code::Unauthenticated,
                StatusCode::UNAUTHORIZED,
                EXIT_REQUEST,
            ),
            ErrorKind::Overloaded => row(
                "overloaded",
                Code::ResourceExhausted,
                StatusCode::TOO_MANY_REQUESTS,
                EXIT_PLATFORM,
            ),
            ErrorKind::Platform => row(
                "platform",
                Code::Unavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                EXIT_PLATFORM,
            ),
        }
    }

    /// Every kind, UNSPECIFIED (which names none) aside: the numbers run
    /// from 1 without a gap.
    pub fn every() -> impl Iterator<Item = ErrorKind> {
        (1..).map_while(|n| ErrorKind::try_from(n).ok())
    }

    /// The `x-sock-error` value.
    pub fn name(self) -> &'static str {
        self.row().name
    }

    pub fn grpc_code(self) -> Code {
        self.row().code
    }

    pub fn http_status(self) -> StatusCode {
        self.row().http
    }

    pub fn exit_code(self) -> u8 {
        self.row().exit
    }

    /// The kind named `name` in `x-sock-error`.
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        let kind = ErrorKind::from_str_name(&format!("ERROR_KIND_{}", name.to_ascii_uppercase()))?;
        (kind != ErrorKind::Unspecified).then_some(kind)
    }

    /// A failed call of this kind: the table's code, stamped with the kind.
    pub fn status(self, message: impl Into<String>) -> Status {
        let mut status = Status::new(self.grpc_code(), message);
        status
            .metadata_mut()
            .insert(ERROR_HEADER, MetadataValue::from_static(self.name()));
        status
    }

    /// The kind a sock service stamped on `status`; None for a status it
    /// did not make (a transport's, a proxy's, tonic's own).
    pub fn stamped(status: &Status) -> Option<ErrorKind> {
        status
            .metadata()
            .get(ERROR_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(ErrorKind::from_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        use StatusCode as H;
        let table = [
            (
                ErrorKind::Function,
                Code::Unknown,
                H::INTERNAL_SERVER_ERROR,
                1,
            ),
            (
                ErrorKind::Timeout,
                Code::DeadlineExceeded,
                H::GATEWAY_TIMEOUT,
                1,
            ),
            (
                ErrorKind::OutOfMemory,
                Code::ResourceExhausted,
                H::INTERNAL_SERVER_ERROR,
                1,
            ),
            (
                ErrorKind::Killed,
                Code::Unknown,
                H::INTERNAL_SERVER_ERROR,
                1,
            ),
            (
                ErrorKind::InvalidRequest,
                Code::InvalidArgument,
                H::BAD_REQUEST,
                2,
            ),
            (ErrorKind::NotFound, Code::NotFound, H::NOT_FOUND, 2),
            (
                ErrorKind::MethodNotAllowed,
                Code::FailedPrecondition,
                H::METHOD_NOT_ALLOWED,
                2,
            ),
            (
                ErrorKind::PayloadTooLarge,
                Code::ResourceExhausted,
                H::PAYLOAD_TOO_LARGE,
                2,
            ),
            (
                ErrorKind::Unauthenticated,
                Code::Unauthenticated,
                H::UNAUTHORIZED,
                2,
            ),
            (
                ErrorKind::CannotStart,
                Code::FailedPrecondition,
                H::INTERNAL_SERVER_ERROR,
                3,
            ),
            (
                ErrorKind::Overloaded,
                Code::ResourceExhausted,
                H::TOO_MANY_REQUESTS,
                4,
            ),
            (
                ErrorKind::Platform,
                Code::Unavailable,
                H::SERVICE_UNAVAILABLE,
                4,
            ),
        ];
        assert_eq!(table.len(), ErrorKind::every().count(), "a row per kind");
        for (kind, code, http, exit) in table {
            assert_eq!(kind.grpc_code(), code, "{kind:?}");
            assert_eq!(kind.http_status(), http, "{kind:?}");
            assert_eq!(kind.exit_code(), exit, "{kind:?}");
            assert!(EXIT_MEANINGS.iter().any(|(code, _)| *code == exit));
        }
    }

    #[test]
    fn names_are_the_proto_names_in_lowercase() {
        for kind in ErrorKind::every() {
            let proto = kind
                .as_str_name()
                .strip_prefix("ERROR_KIND_")
                .expect("prefix");
            assert_eq!(kind.name(), proto.to_ascii_lowercase(), "{kind:?}");
            assert_eq!(ErrorKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(ErrorKind::from_name("unspecified"), None);
        assert_eq!(ErrorKind::from_name("teapot"), None);
    }

    #[test]
    fn a_status_of_a_kind_has_its_code_and_its_stamp() {
        for kind in ErrorKind::every() {
            let status = kind.status("why");
            assert_eq!(status.code(), kind.grpc_code(), "{kind:?}");
            assert_eq!(status.message(), "why");
            assert_eq!(ErrorKind::stamped(&status), Some(kind));
        }
        assert_eq!(ErrorKind::stamped(&Status::internal("tonic's")), None);
    }
}
