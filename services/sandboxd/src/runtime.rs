//! The runtime dir every sandbox mounts read-only: the Python runtime and
//! zygote embedded in sandboxd, and the `libsock_sandbox.so` zygotes fork
//! with, written where an unprivileged sandbox can read them.
//!
//! sandboxd copies `libsock_sandbox.so` from beside its binary (or
//! cargo's `deps/`), and only a library whose bytes carry the stamp of the
//! sources sandboxd was built from (`sock_sandbox::BUILD_STAMP`).
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sock_sandbox::init::ZYGOTE_FILE;
use sock_service::ImportCache;

use crate::error::{Error, StartError, io};

/// The runtime and the zygote, embedded so sandboxd and its runtime always
/// match.
const RUNTIME_PY: &str = include_str!("../../../runtime/sock_runtime.py");
const ZYGOTE_PY: &str = include_str!("../../../runtime/sock_zygote.py");

/// Writes the runtime and the zygote to `runtime_dir`, and the library
/// beside `init_program` too unless the import cache is off.
pub(crate) fn write(
    runtime_dir: &Path,
    import_cache: ImportCache,
    init_program: &Path,
) -> Result<(), StartError> {
    write_runtime(runtime_dir, "sock_runtime.py", RUNTIME_PY)?;
    write_runtime(runtime_dir, ZYGOTE_FILE, ZYGOTE_PY)?;
    if import_cache != ImportCache::Off {
        let library = library(init_program)?;
        write_runtime(runtime_dir, sock_sandbox::LIBRARY_FILE, library)?;
    }
    Ok(())
}

/// Written next to the final name and renamed, so a sandbox starting
/// meanwhile (maybe of another instance sharing the data dir) never sees
/// half a file.
fn write_runtime(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> Result<(), Error> {
    let tmp = dir.join(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
    let path = dir.join(name);
    std::fs::write(&tmp, contents).map_err(io("cannot write", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .map_err(io("cannot set permissions of", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("cannot write", &path))
}

/// `libsock_sandbox.so` (the zygote's fork and lockdown, built from the
/// `sock-sandbox` crate): beside the sandboxd binary, as `cargo build` of
/// the workspace and the release images put it, or in cargo's `deps/`
/// beside it when only sandboxd was built. Only a library built from the
/// same sources as this sandboxd is taken; returns its bytes.
fn library(init_program: &Path) -> Result<Vec<u8>, StartError> {
    let program = match init_program == Path::new("/proc/self/exe") {
        true => std::env::current_exe().unwrap_or_else(|_| init_program.to_path_buf()),
        false => init_program.to_path_buf(),
    };
    let dir = program.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join(sock_sandbox::LIBRARY_FILE),
        dir.join("deps").join(sock_sandbox::LIBRARY_FILE),
    ];
    let mut found = Vec::new();
    for path in &candidates {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        if sock_sandbox::same_build(&bytes) {
            return Ok(bytes);
        }
        found.push(path.display().to_string());
    }
    let why = match found.is_empty() {
        true => "found none".to_string(),
        false => format!("{} built from other sources", found.join(" and ")),
    };
    Err(StartError::InvalidConfig(format!(
        "zygotes need the {} built with this sock-sandboxd beside it ({}, or {}): {why}; \
         build the workspace again (cargo build), or set import_cache = \"off\" to run without zygotes",
        sock_sandbox::LIBRARY_FILE,
        candidates[0].display(),
        candidates[1].display(),
    )))
}
