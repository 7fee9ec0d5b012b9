//! Source builds, part of a cold start when the cache allows them
//! (`allow_source_builds`): the cache fetched an sdist and answered
//! `Prepare` with a `SourceBuild`; sandboxd builds the wheel here and asks
//! again with it. The cache never calls sandboxd.
//!
//! `pip wheel --no-deps --no-index --no-build-isolation` runs the
//! package's build backend, i.e. untrusted code, in a sandbox like a
//! function's (sandbox uid, no capabilities, seccomp, `installer_mem_mb`
//! from the pool, `installer_timeout_s`) whose network namespace from the
//! pool has only `lo`: no route anywhere, nothing listening. `/in` (the
//! cache's dir holding only the sdist) is read-only; `/out` is a fresh
//! dir sandboxd makes below its own data dir and hands to the sandbox uid
//! by fd. The wheel is read back through that dir's fd with
//! `O_NOFOLLOW`, so nothing the build left there (a symlink, a fifo, a
//! second file) makes root read anything else.
//!
//! A cold start's `Prepare` may answer `builds` (the pin, the cache's dir
//! holding only the sdist, its file name); sandboxd builds each, then
//! calls `Prepare` again with the wheels (at most 16 rounds). A build is a
//! spawned task, so a caller giving up wastes no build; one build per
//! requirement at a time, and other cold starts wait and ask again. It
//! runs `python3 -I -m pip wheel --no-deps --no-index --no-build-isolation
//! --wheel-dir /out /in/FILE`, `installer_mem_mb` also bounding `/tmp`.
//! `/out` is made in sandboxd's own `builds/` (root's, 0700) with
//! `mkdirat` and handed over by `fchown` on its fd; afterwards exactly one
//! regular `*.whl` is read through that fd (at most
//! `sock_service::limits::MAX_WHEEL_BYTES`) and the dir removed. A failure
//! is `cannot_start` "function 'f' cannot start: package 'x==1' failed to
//! build from source: <pip's tail>". No RPC takes a path to install into.
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use sock_proto::v1::{BuiltWheel, SourceBuild};
use sock_sandbox::cgroups::CgroupLimits;
use sock_service::limits::MAX_WHEEL_BYTES;

use crate::error::{Error, io};
use crate::pool::MemoryPool;
use crate::sandboxes::{BUILDS_DIR, Sandboxes};

/// The tail of pip's output a failure carries.
const LOG_TAIL_BYTES: usize = 4 << 10;
/// pip and the backend run in processes of their own.
const BUILD_PIDS: u32 = 128;
const IN_DIR: &str = "/in";
const OUT_DIR: &str = "/out";

/// Builds `build`'s sdist into a wheel for `function`'s cold start.
pub(crate) async fn build(
    sandboxes: &Sandboxes,
    pool: &Arc<MemoryPool>,
    function: &str,
    build: SourceBuild,
) -> Result<BuiltWheel, Error> {
    let config = &sandboxes.shared.config;
    check_requirement(&build.requirement)?;
    let sdist_dir = Path::new(&build.dir);
    let valid_sdist = sdist_file_name(&build.file_name)
        && (build.file_name.ends_with(".tar.gz") || build.file_name.ends_with(".zip"));
    if !sdist_dir.is_absolute() || !valid_sdist {
        return Err(Error::InvalidRequest(format!(
            "source build of {}: {:?} in {:?} is not an sdist in an absolute dir",
            build.requirement, build.file_name, build.dir
        )));
    }
    let failed = |reason: String| Error::Build {
        function: function.to_string(),
        requirement: build.requirement.clone(),
        reason,
    };

    let timeout = Duration::from_secs(config.installer_timeout_s);
    let deadline = tokio::time::Instant::now() + timeout;
    let memory_mb = config.installer_mem_mb;
    let reservation = pool.reserve(memory_mb, deadline).await?;
    let data_dir =
        std::path::absolute(&config.data_dir).map_err(io("data dir", &config.data_dir))?;
    let out = OutDir::create(
        &data_dir.join(BUILDS_DIR),
        Uid::from_raw(config.sandbox_uid),
        Gid::from_raw(config.sandbox_gid),
    )?;
    let argv: Vec<String> = [
        config.python.display().to_string(),
        "-I".into(),
        "-m".into(),
        "pip".into(),
        "wheel".into(),
        "--no-deps".into(),
        "--no-index".into(),
        "--no-build-isolation".into(),
        "--no-cache-dir".into(),
        "--disable-pip-version-check".into(),
        "--no-input".into(),
        "--wheel-dir".into(),
        OUT_DIR.into(),
        format!("{IN_DIR}/{}", build.file_name),
    ]
    .into();
    let init_spec = sock_sandbox::init::InitSpec {
        command: Some(argv),
        extra_dirs: vec![
            (sdist_dir.to_path_buf(), IN_DIR.into(), false),
            (out.path.clone(), OUT_DIR.into(), true),
        ],
        // pip unpacks and builds below /tmp; its pages count against the
        // memory limit anyway.
        tmp_mb: memory_mb,
        ..sandboxes.init_spec()
    };
    let limits = CgroupLimits {
        memory_bytes: memory_mb << 20,
        pids: BUILD_PIDS,
        cpu_percent: 0,
    };
    tracing::info!(function, requirement = %build.requirement, "building a package from source");
    // `true`: a network namespace from the pool, which has only `lo`.
    let mut sandbox = sandboxes
        .start(
            "source-build".into(),
            memory_mb,
            limits,
            init_spec,
            true,
            None,
        )
        .await?;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let outcome = sandbox.output(left, LOG_TAIL_BYTES).await;
    drop(reservation);
    match outcome {
        Some((true, _)) => {}
        Some((false, log)) => return Err(failed(String::from_utf8_lossy(&log).trim().into())),
        None => {
            return Err(failed(format!(
                "the build did not finish within {} s and was stopped",
                timeout.as_secs()
            )));
        }
    }
    // The sandbox is gone: nothing changes the dir while it is read.
    let (file_name, wheel) = tokio::task::spawn_blocking(move || out.take_wheel())
        .await
        .map_err(|_| failed("reading the wheel panicked".into()))?
        .map_err(failed)?;
    Ok(BuiltWheel {
        requirement: build.requirement,
        file_name,
        wheel,
    })
}

/// One lock per requirement being built, so concurrent cold starts that
/// need the same sdist build it once: the others wait, then ask the cache
/// again (it has the wheel by then, or they build it themselves).
#[derive(Default)]
pub(crate) struct BuildLocks {
    /// Entries stay: one per sdist-only package the node ever built.
    locks: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl BuildLocks {
    pub(crate) fn of(&self, requirement: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("build locks are never held across a panic")
            .entry(requirement.to_string())
            .or_default()
            .clone()
    }
}

/// A build's output dir: made by sandboxd below a dir of its own (root's,
/// 0700, so no sandbox can swap it), handed to the sandbox uid by fd, and
/// removed when dropped.
struct OutDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl OutDir {
    fn create(parent: &Path, uid: Uid, gid: Gid) -> Result<OutDir, Error> {
        match std::fs::DirBuilder::new().mode(0o700).create(parent) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(io("cannot create", parent)(e));
            }
            _ => {}
        }
        let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |errno: nix::Error| Error::Io {
                what,
                path: path.display().to_string(),
                source: errno.into(),
            }
        };
        let parent_fd = nix::fcntl::open(parent, dir_flags, Mode::empty())
            .map_err(io("cannot open", parent))?;
        let name = uuid::Uuid::new_v4().simple().to_string();
        let path = parent.join(&name);
        nix::sys::stat::mkdirat(&parent_fd, name.as_str(), Mode::S_IRWXU)
            .map_err(io("cannot create", &path))?;
        let fd = nix::fcntl::openat(&parent_fd, name.as_str(), dir_flags, Mode::empty())
            .map_err(io("cannot open", &path))?;
        let out = OutDir { path, fd };
        nix::unistd::fchown(&out.fd, Some(uid), Some(gid))
            .map_err(io("cannot hand over", &out.path))?;
        Ok(out)
    }

    /// The one regular `*.whl` file the build left, read through the
    /// dir's fd without following a symlink.
    fn take_wheel(&self) -> Result<(String, Vec<u8>), String> {
        // Listed through the fd's magic link: the very dir we made, wherever
        // a path might point now.
        let listing = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        let names: Vec<std::ffi::OsString> = std::fs::read_dir(&listing)
            .and_then(|entries| {
                entries
                    .map(|e| e.map(|e| e.file_name()))
                    .collect::<Result<_, _>>()
            })
            .map_err(|e| format!("cannot list the build's output: {e}"))?;
        let name = match names.as_slice() {
            [name] => name.to_string_lossy().into_owned(),
            _ => {
                return Err(format!(
                    "the build left {} files in its output dir, not one wheel",
                    names.len()
                ));
            }
        };
        if !name.ends_with(".whl") || !sdist_file_name(&name) {
            return Err(format!("the build's output {name:?} is not a wheel"));
        }
        // O_NONBLOCK: a fifo planted there does not hang the open.
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&self.fd, name.as_str(), flags, Mode::empty())
            .map_err(|e| format!("the build's {name} cannot be opened as a plain file: {e}"))?;
        let file = std::fs::File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot stat the build's {name}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("the build's {name} is not a regular file"));
        }
        if meta.len() > MAX_WHEEL_BYTES {
            return Err(format!(
                "the built {name} is larger than {MAX_WHEEL_BYTES} bytes"
            ));
        }
        let mut wheel = Vec::new();
        file.take(MAX_WHEEL_BYTES + 1)
            .read_to_end(&mut wheel)
            .map_err(|e| format!("cannot read the built {name}: {e}"))?;
        if wheel.len() as u64 > MAX_WHEEL_BYTES {
            return Err(format!(
                "the built {name} is larger than {MAX_WHEEL_BYTES} bytes"
            ));
        }
        Ok((name, wheel))
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        // Its parent is root's: the path still names the dir we made.
        // remove_dir_all does not follow symlinks inside it.
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove a build's output dir");
        }
    }
}

/// `name==version` and nothing else (it only names the build in errors
/// and goes back to the cache, but never as an option).
fn check_requirement(requirement: &str) -> Result<(), Error> {
    let valid = requirement.split_once("==").is_some_and(|(name, version)| {
        !name.is_empty()
            && !version.is_empty()
            && !name.starts_with('-')
            && requirement.len() <= 256
            && requirement
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-+!=".contains(c))
    });
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "source build requirement {requirement:?} is not \"name==version\""
        )))
    }
}

/// A bare file name: no path, nothing hidden, no odd characters.
fn sdist_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+!".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_are_pins_and_never_options() {
        assert!(check_requirement("requests==2.31.0").is_ok());
        assert!(check_requirement("zope.interface==6.0").is_ok());
        for bad in [
            "",
            "x",
            "--index-url=http://evil==1",
            "-e==1",
            "a b==1",
            "x==1\n--y",
        ] {
            assert!(check_requirement(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn file_names_are_bare() {
        assert!(sdist_file_name("foo_bar-1.0.tar.gz"));
        for bad in ["", "../x.tar.gz", "a/b.whl", ".x.whl", "a b.zip"] {
            assert!(!sdist_file_name(bad), "{bad:?}");
        }
    }

    fn out_dir(parent: &Path) -> OutDir {
        let me = (nix::unistd::getuid(), nix::unistd::getgid());
        OutDir::create(parent, me.0, me.1).expect("out dir")
    }

    #[test]
    fn the_one_wheel_is_read_and_the_dir_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let parent = dir.path().join("builds");
        let out = out_dir(&parent);
        std::fs::write(out.path.join("a-1.0-py3-none-any.whl"), b"zip").expect("write");
        let path = out.path.clone();
        assert_eq!(
            out.take_wheel().expect("read"),
            ("a-1.0-py3-none-any.whl".to_string(), b"zip".to_vec())
        );
        drop(out);
        assert!(!path.exists(), "removed");
        assert!(parent.is_dir(), "the parent stays");
    }

    #[test]
    fn a_symlink_or_extra_file_in_the_output_is_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"do not read").expect("write");
        let out = out_dir(&dir.path().join("builds"));
        std::os::unix::fs::symlink(&secret, out.path.join("x.whl")).expect("symlink");
        let err = out.take_wheel().expect_err("refused");
        assert!(err.contains("cannot be opened as a plain file"), "{err}");
        std::fs::write(out.path.join("y.whl"), b"zip").expect("write");
        let err = out.take_wheel().expect_err("refused");
        assert!(err.contains("left 2 files"), "{err}");
        let path = out.path.clone();
        drop(out);
        assert!(!path.exists(), "removed");
        assert_eq!(std::fs::read(&secret).expect("kept"), b"do not read");

        let out = out_dir(&dir.path().join("builds"));
        std::fs::create_dir(out.path.join("d.whl")).expect("mkdir");
        let err = out.take_wheel().expect_err("refused");
        assert!(err.contains("not a regular file"), "{err}");
    }
}
