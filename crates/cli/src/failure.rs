//! Errors of a known kind, so `sock` exits with the kind's code from
//! sock_proto's one table.
use std::fmt;

use sock_proto::kind::{EXIT_MEANINGS, EXIT_REQUEST};
use sock_proto::v1::ErrorKind;

/// A failure `sock` knows the kind of, or a call sock refused without
/// saying one (the registry's own refusals).
#[derive(Debug)]
pub struct Failed {
    kind: Option<ErrorKind>,
    message: String,
}

impl Failed {
    pub fn new(kind: ErrorKind, message: String) -> Failed {
        Failed {
            kind: Some(kind),
            message,
        }
    }

    /// A failed call: the kind sock stamped on it, else the platform's
    /// when the transport made the status up (sock was not reached).
    pub fn from_status(status: &tonic::Status) -> Failed {
        let transport = std::error::Error::source(status).is_some();
        let kind = ErrorKind::stamped(status).or(transport.then_some(ErrorKind::Platform));
        Failed {
            kind,
            message: format!("{} ({:?})", status.message(), status.code()),
        }
    }

    pub fn exit_code(&self) -> u8 {
        self.kind.map_or(EXIT_REQUEST, ErrorKind::exit_code)
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failed {}

/// The exit codes and the kinds that exit with each, for `sock --help`.
pub fn exit_codes_help() -> String {
    let mut help = String::from("Exit codes:\n  0  done\n");
    for (code, meaning) in EXIT_MEANINGS {
        let kinds: Vec<&str> = ErrorKind::every()
            .filter(|kind| kind.exit_code() == code)
            .map(ErrorKind::name)
            .collect();
        help.push_str(&format!("  {code}  {meaning} ({})\n", kinds.join(", ")));
    }
    help
}

/// What `sock` exits with for `error`: its kind's code; the CLI's own
/// errors (a file it cannot read, say) have none and exit as a wrong
/// request does.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<Failed>())
        .map_or(EXIT_REQUEST, Failed::exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_status_exits_with_its_kinds_code() {
        for kind in ErrorKind::every() {
            let error = anyhow::Error::new(Failed::from_status(&kind.status("why")));
            assert_eq!(exit_code(&error), kind.exit_code(), "{kind:?}");
        }
    }

    #[test]
    fn the_failed_install_exits_3() {
        let status = ErrorKind::CannotStart
            .status("function 'needs' cannot start: package 'socklater==1.0' failed to install");
        let error = anyhow::Error::new(Failed::from_status(&status));
        assert_eq!(exit_code(&error), 3);
        assert_eq!(
            error.to_string(),
            "function 'needs' cannot start: package 'socklater==1.0' failed to install \
             (FailedPrecondition)"
        );
    }

    #[test]
    fn a_transport_failure_is_the_platforms_and_other_errors_exit_2() {
        let mut made_up = tonic::Status::unavailable("transport error");
        made_up.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        let error = anyhow::Error::new(Failed::from_status(&made_up));
        assert_eq!(exit_code(&error), ErrorKind::Platform.exit_code());
        let unstamped = anyhow::Error::new(Failed::from_status(&tonic::Status::not_found("gone")));
        assert_eq!(exit_code(&unstamped), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("cannot open f.py")), 2);
    }
}
