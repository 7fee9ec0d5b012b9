//! sandboxd's error type for calls, and its one mapping to a gRPC status;
//! and, apart, what can keep sandboxd from starting ([`StartError`]).
//!
//! Messages name what failed (path, syscall, cgroup) for the log; the
//! status a caller sees says what happened without host internals.
use std::path::Path;

use sock_proto::v1::ErrorKind;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] sock_sandbox::cgroups::CgroupError),
    #[error("code or package dir {path} is not an absolute path to a directory")]
    CodeDir { path: String },
    /// A dir that a symlink (or `..`) could redirect: root mounts none.
    #[error("refusing to mount a code or package dir: {0}")]
    UnsafeDir(String),
    #[error("cannot start sandbox init {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("cannot send the spec to sandbox {id}: {source}")]
    Spec { id: String, source: std::io::Error },
    #[error("sandbox {id} failed during setup ({status}); its init logged why")]
    Setup { id: String, status: String },
    #[error("zygote {id} did not start: {why}")]
    Zygote { id: String, why: String },
    #[error("zygote {zygote} could not fork: {why}")]
    Fork { zygote: String, why: String },
    #[error("cannot build the root of sandbox {id}: {why}")]
    Root { id: String, why: String },
    #[error("sandbox {id} was already destroyed")]
    Destroyed { id: String },
    #[error("{0}")]
    InvalidRequest(String),
    /// A source build failed or left no usable wheel.
    #[error(
        "function '{function}' cannot start: package '{requirement}' failed to build from source: {reason}"
    )]
    Build {
        function: String,
        requirement: String,
        reason: String,
    },
    #[error(transparent)]
    Seccomp(#[from] sock_sandbox::seccomp::SeccompError),
    #[error(transparent)]
    Pool(#[from] crate::pool::PoolError),
    #[error(
        "all {count} function uids from {base} are in use by live sandboxes; raise function_uids"
    )]
    Uids { base: u32, count: u32 },
    #[error("cache: {}", .0.message())]
    Cache(Status),
}

/// What keeps sandboxd from starting or serving: the operator's to fix,
/// never the answer to a call.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "sock-sandboxd must run as root: it creates namespaces, mounts and cgroups \
         (running as uid {uid})"
    )]
    NotRoot { uid: u32 },
    #[error("invalid sandboxd config: {0}")]
    InvalidConfig(String),
    /// The data dir, runtime dir, cgroups or seccomp filters could not be
    /// set up.
    #[error("cannot set up the node: {0}")]
    Node(#[from] Error),
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot serve metrics: {0}")]
    Metrics(#[source] std::io::Error),
}

/// An [`Error::Io`] saying what failed on `path`, for `map_err`.
pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.display().to_string();
    move |source| Error::Io { what, path, source }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidRequest(msg) => ErrorKind::InvalidRequest.status(msg),
            // Its reason is the build's own output: the function author's.
            build @ Error::Build { .. } => ErrorKind::CannotStart.status(build.to_string()),
            Error::Pool(e) => ErrorKind::Overloaded.status(e.to_string()),
            uids @ Error::Uids { .. } => ErrorKind::Overloaded.status(uids.to_string()),
            // The cache stamped what it answered, in words meant for the
            // caller; a status it did not stamp is the transport's.
            Error::Cache(status) => match ErrorKind::stamped(&status) {
                Some(kind) => kind.status(status.message()),
                None => ErrorKind::Platform
                    .status(format!("code cache unavailable: {}", status.message())),
            },
            other => {
                tracing::error!(error = %other, "sandbox platform failure");
                let what = match other {
                    Error::Cgroup(_) => "cannot set up the sandbox's cgroup",
                    Error::Spawn { .. }
                    | Error::Spec { .. }
                    | Error::Zygote { .. }
                    | Error::Fork { .. }
                    | Error::Root { .. } => "cannot start a sandbox",
                    Error::Setup { .. } => "sandbox setup failed",
                    Error::CodeDir { .. } => "the function's code is not on this node",
                    Error::UnsafeDir(_) => {
                        "the function's code or packages are unsafe to mount (a symlink on their \
                         path, or a dir outside the cache's)"
                    }
                    Error::Destroyed { .. } => "the sandbox was destroyed during the call",
                    _ => "sandboxd failed",
                };
                ErrorKind::Platform
                    .status(format!("{what}; the node's sandboxd log has the details"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn internal_failures_do_not_leak_host_paths() {
        let status = Status::from(Error::Spawn {
            program: "/work/secret/target/sock-sandboxd".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(ErrorKind::stamped(&status), Some(ErrorKind::Platform));
        assert!(!status.message().contains("/work"), "{}", status.message());
        assert!(status.message().starts_with("cannot start a sandbox"));
    }

    #[test]
    fn cache_outage_is_a_platform_error_and_its_stamped_answers_pass_through() {
        let down = Status::from(Error::Cache(Status::unavailable("tcp connect error")));
        assert_eq!(down.code(), Code::Unavailable);
        assert_eq!(ErrorKind::stamped(&down), Some(ErrorKind::Platform));
        assert_eq!(down.message(), "code cache unavailable: tcp connect error");

        let missing = Status::from(Error::Cache(
            ErrorKind::NotFound.status("function 'x' does not exist; push it with `sock push`"),
        ));
        assert_eq!(missing.code(), Code::NotFound);
        assert_eq!(ErrorKind::stamped(&missing), Some(ErrorKind::NotFound));
        assert_eq!(
            missing.message(),
            "function 'x' does not exist; push it with `sock push`"
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let status = Status::from(Error::InvalidRequest("function is required".into()));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "function is required");
    }
}
