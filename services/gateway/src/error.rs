//! Everything that can fail in the gateway, and the one place it becomes a
//! gRPC status.
use std::error::Error as _;

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidName(#[from] sock_bundle::BundleError),
    #[error("timeout_ms must be greater than 0; leave it unset for the function's own limit")]
    ZeroTimeout,
    #[error("function '{0}' does not exist; push it with `sock push`")]
    NotFound(String),
    #[error("registry unavailable: {0}")]
    RegistryUnavailable(String),
    #[error("no sandbox node reachable: {0}")]
    SandboxdUnreachable(String),
    /// sandboxd answered the call with a status of its own.
    #[error("{}", .0.message())]
    Sandboxd(Status),
    #[error("function '{function}' did not answer within its budget of {budget_ms} ms")]
    DeadlineExceeded { function: String, budget_ms: u64 },
    #[error("the sandbox node answered call {0} with neither a result nor an error")]
    EmptyAnswer(String),
    #[error("invalid {field} '{value}': {source}")]
    InvalidAddress {
        field: &'static str,
        value: String,
        source: tonic::transport::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
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

    /// Whether the platform failed, as opposed to the caller asking for
    /// something that cannot be done; decides the log level.
    pub(crate) fn is_platform_failure(&self) -> bool {
        matches!(
            self,
            Error::RegistryUnavailable(_)
                | Error::SandboxdUnreachable(_)
                | Error::DeadlineExceeded { .. }
                | Error::EmptyAnswer(_)
        )
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
        let code = match &error {
            Error::InvalidName(_) | Error::ZeroTimeout => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::RegistryUnavailable(_) | Error::SandboxdUnreachable(_) => Code::Unavailable,
            Error::Sandboxd(status) => status.code(),
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::EmptyAnswer(_) | Error::InvalidAddress { .. } | Error::Serve(_) => {
                Code::Internal
            }
        };
        Status::new(code, error.to_string())
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
        let err = sock_bundle::validate_name("Hello").expect_err("uppercase is refused");
        let status: Status = Error::from(err).into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("invalid function name 'Hello'"),
            "{}",
            status.message()
        );
    }
}
