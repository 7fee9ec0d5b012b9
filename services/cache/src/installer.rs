//! Who runs `pip install`: the cache itself, unprivileged and with no
//! sandbox, because it installs wheels only. `--only-binary :all:` makes
//! pip refuse anything it would have to build, and installing a wheel is
//! unpacking a zip: no package code runs. A package with only an sdist
//! fails here ("no matching distribution"); the store then refuses it or,
//! with `allow_source_builds`, has sandboxd build it offline.
//!
//! A trait, so the store's single-flight and failure rules are testable
//! without pip.
//!
//! The command: `python -I -m pip install --only-binary :all: --no-deps
//! --no-compile --target tmp/install-*/files`, offline with `--no-index` from
//! `find_links` when set, else from `index_url`; bounded by
//! `installer_timeout_s`, HOME `pip-home/`, modes made 0755/0644 afterwards.
//! A sandbox per install would cost a cold start and guard nothing, since
//! installing a wheel runs no package code. A wheel sandboxd built from
//! source is installed the same way, pip reading it from a temp find-links
//! dir.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncReadExt;

use crate::config::Config;
use crate::error::{Error, StartError};

/// Output kept from one pip run: its reason is at the end.
const LOG_TAIL_BYTES: usize = 16 << 10;

#[derive(Debug)]
pub(crate) enum InstallFailure {
    /// pip ran and failed: the tail of its output.
    Pip(String),
    /// pip found nothing it may install (under `--only-binary`: no wheel
    /// for this platform, maybe an sdist): the tail of its output.
    NoWheel(String),
    /// pip could not be run.
    Unavailable(String),
}

/// Where pip looks for the wheel.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Source {
    /// The configured `find_links` or index.
    Configured,
    /// Only this dir (a wheel sandboxd built), offline.
    Wheelhouse(PathBuf),
}

pub(crate) trait Installer: Send + Sync + 'static {
    /// `pip install --only-binary :all: --no-deps --target <target>
    /// <requirement>`; `target` exists and is empty.
    fn install(
        &self,
        requirement: String,
        target: PathBuf,
        source: Source,
    ) -> BoxFuture<'static, Result<(), InstallFailure>>;
}

pub(crate) struct PipInstaller {
    python: PathBuf,
    find_links: Vec<PathBuf>,
    index_url: String,
    timeout: Duration,
    /// pip's HOME: the cache's own, never the service user's.
    home: PathBuf,
}

impl PipInstaller {
    /// Blocking: checks the find_links dirs and creates pip's HOME under
    /// `data_dir`.
    pub(crate) fn new(config: &Config, data_dir: &Path) -> Result<PipInstaller, StartError> {
        let mut find_links = Vec::new();
        for dir in &config.find_links {
            let absolute = dir.canonicalize().map_err(|e| {
                StartError::InvalidConfig(format!("find_links {}: {e}", dir.display()))
            })?;
            find_links.push(absolute);
        }
        let home = data_dir.join("pip-home");
        std::fs::create_dir_all(&home).map_err(|e| Error::io("create", &home, e))?;
        Ok(PipInstaller {
            python: config.python.clone(),
            find_links,
            index_url: config.index_url.clone(),
            timeout: Duration::from_secs(config.installer_timeout_s),
            home,
        })
    }

    fn argv(&self, requirement: &str, target: &Path, source: &Source) -> Vec<String> {
        let mut argv: Vec<String> = [
            "-I",
            "-m",
            "pip",
            "install",
            "--only-binary",
            ":all:",
            "--no-deps",
            "--no-compile",
            "--disable-pip-version-check",
            "--no-input",
            "--no-cache-dir",
            "--target",
        ]
        .map(String::from)
        .into();
        argv.push(target.display().to_string());
        let links: Vec<&Path> = match source {
            Source::Wheelhouse(dir) => vec![dir],
            Source::Configured => self.find_links.iter().map(PathBuf::as_path).collect(),
        };
        if links.is_empty() {
            argv.extend(["--index-url".into(), self.index_url.clone()]);
        } else {
            argv.push("--no-index".into());
            for dir in links {
                argv.extend(["--find-links".into(), dir.display().to_string()]);
            }
        }
        // Never an option, whatever the requirement says.
        argv.push("--".into());
        argv.push(requirement.to_string());
        argv
    }
}

impl Installer for PipInstaller {
    fn install(
        &self,
        requirement: String,
        target: PathBuf,
        source: Source,
    ) -> BoxFuture<'static, Result<(), InstallFailure>> {
        let mut command = tokio::process::Command::new(&self.python);
        command
            .args(self.argv(&requirement, &target, &source))
            .env("HOME", &self.home)
            .env("PIP_CONFIG_FILE", "/dev/null")
            .env_remove("PYTHONPATH")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let python = self.python.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let mut child = command.spawn().map_err(|e| {
                InstallFailure::Unavailable(format!("cannot run {}: {e}", python.display()))
            })?;
            let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
            let run = async {
                // Both streams at once, so neither pipe fills and blocks pip.
                let (out, err) = tokio::join!(read_tail(stdout), read_tail(stderr));
                let status = child.wait().await;
                (status, out, err)
            };
            let Ok((status, out, err)) = tokio::time::timeout(timeout, run).await else {
                return Err(InstallFailure::Pip(format!(
                    "pip install {requirement} did not finish within {} s and was stopped",
                    timeout.as_secs()
                )));
            };
            let mut log = out;
            log.extend_from_slice(&err);
            let log = String::from_utf8_lossy(&log).into_owned();
            match status {
                Ok(status) if status.success() => {}
                Ok(_) if no_wheel(&log) => return Err(InstallFailure::NoWheel(log)),
                Ok(_) => return Err(InstallFailure::Pip(log)),
                Err(e) => return Err(InstallFailure::Unavailable(format!("waiting for pip: {e}"))),
            }
            tokio::task::spawn_blocking(move || open_up(&target))
                .await
                .map_err(|_| InstallFailure::Unavailable("fixing modes panicked".into()))?
                .map_err(|e| InstallFailure::Pip(format!("cannot make the install readable: {e}")))
        })
    }
}

/// pip's words when `--only-binary :all:` left it nothing to install.
pub(crate) fn no_wheel(log: &str) -> bool {
    log.contains("No matching distribution found for")
}

async fn read_tail(stream: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut tail = Vec::new();
    let Some(mut stream) = stream else {
        return tail;
    };
    let mut chunk = vec![0u8; 8192];
    while let Ok(n) = stream.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > 2 * LOG_TAIL_BYTES {
            tail.drain(..tail.len() - LOG_TAIL_BYTES);
        }
    }
    if tail.len() > LOG_TAIL_BYTES {
        tail.drain(..tail.len() - LOG_TAIL_BYTES);
    }
    tail
}

/// Sandboxes read packages as another uid, whatever umask the cache runs
/// with: dirs 0755, files 0644, or 0755 when anyone could execute them.
/// Symlinks are left alone (their mode means nothing).
fn open_up(root: &Path) -> std::io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        let mode = if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
            0o755
        } else if meta.is_file() {
            match meta.permissions().mode() & 0o111 {
                0 => 0o644,
                _ => 0o755,
            }
        } else {
            continue;
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installer(find_links: Vec<PathBuf>) -> PipInstaller {
        PipInstaller {
            python: "/usr/bin/python3".into(),
            find_links,
            index_url: "https://pypi.example/simple".into(),
            timeout: Duration::from_secs(1),
            home: "/data/pip-home".into(),
        }
    }

    #[test]
    fn pip_installs_wheels_only_from_the_configured_source() {
        let target = Path::new("/data/tmp/install-1/files");
        let index = installer(Vec::new()).argv("a==1", target, &Source::Configured);
        let joined = index.join(" ");
        assert!(joined.contains("--only-binary :all: --no-deps"), "{joined}");
        assert!(
            joined.ends_with("--index-url https://pypi.example/simple -- a==1"),
            "{joined}"
        );
        let links = installer(vec!["/wheels".into()]);
        let offline = links.argv("a==1", target, &Source::Configured).join(" ");
        assert!(
            offline.ends_with("--no-index --find-links /wheels -- a==1"),
            "{offline}"
        );
        // A built wheel comes from its own dir only.
        let built = links
            .argv(
                "a==1",
                target,
                &Source::Wheelhouse("/data/tmp/wheel-1".into()),
            )
            .join(" ");
        assert!(
            built.ends_with("--no-index --find-links /data/tmp/wheel-1 -- a==1"),
            "{built}"
        );
    }

    #[test]
    fn installed_files_are_readable_by_everyone_whatever_the_umask() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pkg = dir.path().join("pkg");
        std::fs::create_dir(&pkg).expect("mkdir");
        std::fs::write(pkg.join("mod.py"), "").expect("write");
        std::fs::write(pkg.join("tool"), "").expect("write");
        let set = |p: &Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
        };
        set(&pkg.join("mod.py"), 0o600);
        set(&pkg.join("tool"), 0o700);
        set(&pkg, 0o700);
        open_up(dir.path()).expect("modes fixed");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&pkg), 0o755);
        assert_eq!(mode(&pkg.join("mod.py")), 0o644);
        assert_eq!(mode(&pkg.join("tool")), 0o755);
    }

    #[test]
    fn no_wheel_is_told_from_pips_output() {
        let log = "ERROR: Could not find a version that satisfies the requirement x==1.0 (from versions: none)\nERROR: No matching distribution found for x==1.0";
        assert!(no_wheel(log));
        assert!(!no_wheel(
            "ERROR: Could not install packages due to an OSError"
        ));
    }
}
