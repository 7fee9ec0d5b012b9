//! `Install`: `pip install --no-deps --target` of one pinned requirement,
//! run in a sandbox like a function's (unprivileged uid, no capabilities,
//! seccomp, its own cgroup with `installer_mem_mb`) but with the host's
//! network, so PyPI is reachable. Only the target dir is writable, and it
//! must lie below the cache's data dir.
//!
//! pip runs as the sandbox uid: the target dir is handed to that uid for
//! the run and everything in it handed back to the dir's owner after, so
//! the (unprivileged) cache owns what was installed.
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sock_proto::v1::{InstallRequest, InstallResponse};

use crate::cgroups::CgroupLimits;
use crate::error::Error;
use crate::pool::MemoryPool;
use crate::sandbox::Sandboxes;

/// The tail of pip's output the answer carries.
const LOG_TAIL_BYTES: usize = 16 << 10;
/// pip builds and unpacks in processes of its own.
const INSTALLER_PIDS: u32 = 128;
const OUT_DIR: &str = "/out";

pub(crate) async fn install(
    sandboxes: &Sandboxes,
    pool: &Arc<MemoryPool>,
    req: InstallRequest,
) -> Result<InstallResponse, Error> {
    let config = &sandboxes.shared.config;
    check_requirement(&req.requirement)?;
    let target = check_target(&req.target_dir, &config.cache_data_dir)?;
    let mut extra = vec![(target.clone(), OUT_DIR.to_string(), true)];
    let mut argv: Vec<String> = [
        config.python.display().to_string(),
        "-I".into(),
        "-m".into(),
        "pip".into(),
        "install".into(),
        "--no-deps".into(),
        "--no-compile".into(),
        "--disable-pip-version-check".into(),
        "--no-input".into(),
        "--no-cache-dir".into(),
        "--target".into(),
        OUT_DIR.into(),
    ]
    .into();
    if !req.find_links.is_empty() {
        argv.push("--no-index".into());
    }
    for (i, dir) in req.find_links.iter().enumerate() {
        let dir = Path::new(dir);
        if !dir.is_absolute() || !dir.is_dir() {
            return Err(Error::InvalidRequest(format!(
                "find_links {} is not an absolute path to a directory",
                dir.display()
            )));
        }
        let inside = format!("/links/{i}");
        extra.push((dir.to_path_buf(), inside.clone(), false));
        argv.extend(["--find-links".into(), inside]);
    }
    if !req.index_url.is_empty() {
        let url = &req.index_url;
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.contains(char::is_whitespace)
        {
            return Err(Error::InvalidRequest(format!(
                "index_url {url:?} must be an http(s) URL"
            )));
        }
        argv.extend(["--index-url".into(), url.clone()]);
    }
    argv.push(req.requirement.clone());

    let memory_mb = match req.memory_mb {
        0 => config.installer_mem_mb,
        mb => mb,
    };
    let timeout = match req.timeout_ms {
        0 => Duration::from_secs(config.installer_timeout_s),
        ms => Duration::from_millis(u64::from(ms)),
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let reservation = pool.reserve(memory_mb, deadline).await?;
    let owner = std::fs::metadata(&target).map_err(crate::sandbox::io("target dir", &target))?;
    let (uid, gid) = (config.sandbox_uid, config.sandbox_gid);
    std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
        .map_err(crate::sandbox::io("cannot hand over", &target))?;

    let init_spec = crate::init::InitSpec {
        command: Some(argv),
        extra_dirs: extra,
        // pip unpacks into a temp dir first; its pages count against the
        // memory limit anyway.
        tmp_mb: memory_mb,
        ..sandboxes.init_spec()
    };
    let limits = CgroupLimits {
        memory_bytes: memory_mb << 20,
        pids: INSTALLER_PIDS,
        cpu_percent: 0,
    };
    let started = sandboxes
        .start("installer".into(), memory_mb, limits, init_spec, false)
        .await;
    let answer = match started {
        Ok(mut sandbox) => {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match sandbox.output(left, LOG_TAIL_BYTES).await {
                Some((ok, log)) => InstallResponse {
                    ok,
                    log: String::from_utf8_lossy(&log).into_owned(),
                },
                None => InstallResponse {
                    ok: false,
                    log: format!(
                        "pip install {} did not finish within {} s and was stopped",
                        req.requirement,
                        timeout.as_secs()
                    ),
                },
            }
        }
        Err(e) => {
            give_back(&target, owner.uid(), owner.gid());
            return Err(e);
        }
    };
    drop(reservation);
    let target_for_walk = target.clone();
    let _ =
        tokio::task::spawn_blocking(move || give_back(&target_for_walk, owner.uid(), owner.gid()))
            .await;
    Ok(answer)
}

/// `name==version` or any single requirement pip takes, but never an
/// option (or something that could smuggle one in).
fn check_requirement(requirement: &str) -> Result<(), Error> {
    let valid = !requirement.is_empty()
        && !requirement.starts_with('-')
        && requirement.len() <= 256
        && requirement
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-[],=<>!~+*;".contains(c));
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "requirement {requirement:?} is not a pip requirement such as \"name==1.0\""
        )))
    }
}

/// The target dir, resolved, if it is a directory below the cache's data
/// dir (not the data dir itself).
fn check_target(target: &str, cache_data_dir: &Path) -> Result<PathBuf, Error> {
    let refuse = || {
        Error::InvalidRequest(format!(
            "target_dir {target:?} must be an existing directory below the cache's data dir"
        ))
    };
    let target = Path::new(target);
    if !target.is_absolute() {
        return Err(refuse());
    }
    let resolved = target.canonicalize().map_err(|_| refuse())?;
    let root = cache_data_dir.canonicalize().map_err(|_| refuse())?;
    if !resolved.is_dir() || resolved == root || !resolved.starts_with(&root) {
        return Err(refuse());
    }
    Ok(resolved)
}

/// Hands everything below `dir` (not following symlinks) to `uid`/`gid`.
fn give_back(dir: &Path, uid: u32, gid: u32) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if let Err(e) = std::os::unix::fs::lchown(&path, Some(uid), Some(gid)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot hand an installed file back");
        }
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if is_dir && let Ok(entries) = std::fs::read_dir(&path) {
            stack.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_are_never_options() {
        assert!(check_requirement("requests==2.31.0").is_ok());
        assert!(check_requirement("zope.interface==6.0").is_ok());
        for bad in ["", "--index-url=http://evil", "-e .", "a b", "x==1\n--y"] {
            assert!(check_requirement(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn targets_must_be_below_the_cache_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("cache");
        let pkg = cache.join("packages/a==1/files");
        std::fs::create_dir_all(&pkg).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("elsewhere")).expect("mkdir");
        assert!(check_target(pkg.to_str().expect("utf-8"), &cache).is_ok());
        for bad in [
            cache.clone(),
            dir.path().join("elsewhere"),
            cache.join("../elsewhere"),
            cache.join("missing"),
        ] {
            let err = check_target(bad.to_str().expect("utf-8"), &cache).expect_err("refused");
            assert!(
                err.to_string().contains("below the cache's data dir"),
                "{err}"
            );
        }
        assert!(check_target("relative/dir", &cache).is_err());
    }
}
