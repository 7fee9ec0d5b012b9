//! The same cold call without sock: a new process (or container) per call
//! that reads the event on stdin and prints f(event), as OpenFaaS's classic
//! watchdog runs functions.
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::stats::Series;

pub const PYTHON: &str = "/usr/bin/python3";
const IMAGE: &str = "sock-base:bookworm";
const RUNNER: &str = include_str!("../runner.py");
const PAYLOAD: &[u8] = br#"{"hello":"world"}"#;

/// A baseline that ran, or why it did not.
pub enum Outcome {
    Ran(Series),
    Skipped { label: String, why: String },
}

struct Method {
    label: &'static str,
    argv: Vec<String>,
    /// Calls relative to the cheap methods (Docker and gVisor are slow).
    share: f64,
    missing: Option<String>,
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn methods(code: &str) -> Vec<Method> {
    let s = |v: &[&str]| v.iter().map(|a| (*a).to_string()).collect::<Vec<_>>();
    let runner = format!("{code}/runner.py");
    let need = |program: &str, install: &str| {
        (!on_path(program)).then(|| format!("`{program}` not installed ({install})"))
    };
    let docker_missing = if !on_path("docker") {
        Some("`docker` not installed".to_string())
    } else {
        let ok = Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        (!ok).then(|| {
            format!(
                "image {IMAGE} missing or Docker not running (build it with scripts/base-image)"
            )
        })
    };
    vec![
        Method {
            label: "python3 -c pass (floor)",
            argv: s(&[PYTHON, "-c", "pass"]),
            share: 1.0,
            missing: None,
        },
        Method {
            label: "fork-exec python3 f.py",
            argv: s(&[PYTHON, &runner, code]),
            share: 1.0,
            missing: None,
        },
        Method {
            label: "unshare (5 namespaces)",
            argv: s(&[
                "unshare", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", PYTHON,
                &runner, code,
            ]),
            share: 1.0,
            missing: need("unshare", "apt install util-linux"),
        },
        Method {
            label: "bwrap",
            argv: s(&[
                "bwrap",
                "--ro-bind",
                "/usr",
                "/usr",
                "--symlink",
                "usr/lib",
                "/lib",
                "--symlink",
                "usr/lib64",
                "/lib64",
                "--symlink",
                "usr/bin",
                "/bin",
                "--ro-bind",
                code,
                "/code",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                "--unshare-all",
                "--die-with-parent",
                "--new-session",
                PYTHON,
                "/code/runner.py",
                "/code",
            ]),
            share: 1.0,
            missing: need("bwrap", "apt install bubblewrap"),
        },
        Method {
            label: "gVisor runsc do",
            argv: s(&["runsc", "--network=none", "do", PYTHON, &runner, code]),
            share: 0.3,
            missing: need("runsc", "apt install runsc"),
        },
        Method {
            label: "docker run --rm",
            argv: s(&[
                "docker",
                "run",
                "--rm",
                "-i",
                "--network",
                "none",
                "-v",
                &format!("{code}:/code:ro"),
                IMAGE,
                "python3",
                "/code/runner.py",
                "/code",
            ]),
            share: 0.2,
            missing: docker_missing,
        },
    ]
}

/// Writes the echo function and the runner into `dir` (readable by the
/// unprivileged users of containers).
pub fn write_code(dir: &Path, function: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(dir.join("f.py"), function)?;
    std::fs::write(dir.join("runner.py"), RUNNER)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn one_call(argv: &[String], check: bool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", argv[0]))?;
    child
        .stdin
        .take()
        .context("stdin of the call")?
        .write_all(PAYLOAD)
        .context("write the event")?;
    let out = child.wait_with_output().context("wait for the call")?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let answer: Vec<u8> = out.stdout.into_iter().filter(|b| *b != b' ').collect();
    if check && answer != PAYLOAD {
        bail!(
            "`{}` answered {}",
            argv.join(" "),
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(took)
}

/// Runs every baseline `calls` times (fewer for the slow ones), after one
/// uncounted call each.
pub fn run(code: &Path, calls: usize) -> Vec<Outcome> {
    let code = code.display().to_string();
    let mut results = Vec::new();
    for m in methods(&code) {
        if let Some(why) = m.missing {
            eprintln!("sock-bench: skipping {}: {why}", m.label);
            results.push(Outcome::Skipped {
                label: m.label.into(),
                why,
            });
            continue;
        }
        let n = ((calls as f64 * m.share).ceil() as usize).max(3);
        eprintln!("sock-bench: {} × {n}", m.label);
        let check = m.label != "python3 -c pass (floor)";
        let mut series = Series::new(m.label, m.argv.join(" "));
        let ran = (0..=n).try_for_each(|i| {
            let took = one_call(&m.argv, check)?;
            if i > 0 {
                series.samples.push(took);
            }
            anyhow::Ok(())
        });
        match ran {
            Ok(()) => results.push(Outcome::Ran(series)),
            Err(e) => {
                eprintln!("sock-bench: {} failed: {e:#}", m.label);
                results.push(Outcome::Skipped {
                    label: m.label.into(),
                    why: format!("failed: {e:#}"),
                });
            }
        }
    }
    results
}
