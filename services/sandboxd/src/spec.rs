//! What a caller asks of a function sandbox, and the checks a request
//! passes before anything is made for it: a function sandbox started
//! fresh ([`Sandboxes::create`]) and one forked from a zygote
//! ([`Zygote::fork`]) take the same spec and the same checks.
//!
//! Limits come from ol.yaml, else from [`crate::Config`] (`cpu_percent`
//! 100 = one CPU): memory (and memsw on v1), pids and cpu quota, each then
//! capped at the operator's ceilings (`sock_service::Ceilings`), whatever
//! the registry let through. A call's time is the budget the gateway
//! worked out once (the shortest of its caller's, its gRPC deadline and
//! ol.yaml's `timeout_ms`) and sent as `timeout_ms`; 0 means the node's
//! `timeout_ms`, and `max_timeout_ms` caps it whoever asks.
//!
//! [`Sandboxes::create`]: crate::Sandboxes::create
//! [`Zygote::fork`]: crate::Zygote::fork
use std::path::{Component, Path, PathBuf};

use sock_sandbox::mounts;

use crate::error::Error;

/// Resource limits of one sandbox as its function asked them; 0 takes
/// sandboxd's configured default, and nothing passes its ceilings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_mb: u64,
    pub pids: u32,
    /// Share of one CPU in percent (100 = one CPU).
    pub cpu_percent: u32,
}

/// What to run in a new sandbox.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SandboxSpec {
    /// Function name, for logs.
    pub function: String,
    /// Host directory with the function's code, mounted read-only at /code.
    pub code_dir: PathBuf,
    /// Host directories of installed packages, in sys.path order.
    pub package_dirs: Vec<PathBuf>,
    /// Entry file inside the code dir; empty means "f.py".
    pub entry_file: String,
    /// Extra environment of the function.
    pub environment: Vec<(String, String)>,
    pub limits: Limits,
}

/// Each dir must be an absolute path to a directory with no symlink on the
/// way (beneath `cache_data_dir` when below it). The init and the zygote
/// path check again as they mount, by fd; this check is what gives the
/// caller a clear error.
pub(crate) fn check_dirs(dirs: &[PathBuf], cache_data_dir: Option<&Path>) -> Result<(), Error> {
    for dir in dirs {
        let code_dir = || Error::CodeDir {
            path: dir.display().to_string(),
        };
        if !dir.is_absolute() {
            return Err(code_dir());
        }
        match mounts::open_untrusted_dir(dir, cache_data_dir) {
            Ok(_) => {}
            Err(e) if e.is_unsafe_path() => return Err(Error::UnsafeDir(e.to_string())),
            Err(_) => return Err(code_dir()),
        }
    }
    Ok(())
}

pub(crate) fn check_spec(spec: &SandboxSpec, cache_data_dir: Option<&Path>) -> Result<(), Error> {
    check_dirs(std::slice::from_ref(&spec.code_dir), cache_data_dir)?;
    check_dirs(&spec.package_dirs, cache_data_dir)?;
    let entry = Path::new(&spec.entry_file);
    if !entry
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(Error::InvalidRequest(format!(
            "entry file {:?} must be a relative path inside the function's bundle",
            spec.entry_file
        )));
    }
    for (key, value) in &spec.environment {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            return Err(Error::InvalidRequest(format!(
                "environment variable {key:?} is not valid: names must be non-empty \
                 without '=' or NUL, values without NUL"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_files_cannot_escape_the_bundle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = |entry: &str| SandboxSpec {
            code_dir: dir.path().to_path_buf(),
            entry_file: entry.into(),
            ..SandboxSpec::default()
        };
        assert!(check_spec(&spec("f.py"), None).is_ok());
        assert!(check_spec(&spec("src/handler.py"), None).is_ok());
        let err = check_spec(&spec("../f.py"), None).expect_err("escapes");
        assert!(err.to_string().contains("must be a relative path"), "{err}");
        assert!(check_spec(&spec("/etc/passwd"), None).is_err());
    }

    #[test]
    fn bad_environment_names_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = SandboxSpec {
            code_dir: dir.path().to_path_buf(),
            environment: vec![("A=B".into(), "c".into())],
            ..SandboxSpec::default()
        };
        let err = check_spec(&spec, None).expect_err("'=' in a name");
        assert!(err.to_string().contains("\"A=B\" is not valid"), "{err}");
    }
}
