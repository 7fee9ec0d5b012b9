//! The same cold call without sock: a new process (or container) per call
//! that reads the event on stdin and prints f(event), as OpenFaaS's classic
//! watchdog runs functions. What they need and this machine lacks is
//! installed first, never skipped.
//!
//! Each call runs `bench/runner.py` under the baseline.
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::stats::Series;

pub const PYTHON: &str = "/usr/bin/python3";
const IMAGE: &str = "sock-base:bookworm";
const FLOOR: &str = "python3 -c pass (floor)";
/// Labels the report looks up (the floors of issue 15's targets among them).
pub const FORK_EXEC: &str = "fork-exec python3 f.py";
pub const BWRAP: &str = "bwrap --unshare-all + python3 f.py";
pub const DOCKER: &str = "docker run --rm";
const RUNNER: &str = include_str!("../runner.py");
const PAYLOAD: &[u8] = br#"{"hello":"world"}"#;

struct Method {
    label: &'static str,
    argv: Vec<String>,
    /// Calls relative to the cheap methods (Docker and gVisor are slow).
    share: f64,
}

/// Programs the baselines run that may be missing, and the Debian
/// package of each.
const PACKAGES: [(&str, &str); 2] = [("bwrap", "bubblewrap"), ("runsc", "runsc")];

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Runs `program args`, its output on ours; fails naming the command.
fn run_shown(program: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let command = format!("{program} {}", args.join(" "));
    eprintln!("sock-bench: running `{command}`");
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("start `{command}`"))?;
    if !status.success() {
        bail!("`{command}` failed ({status}); sock-bench needs it, see its output above");
    }
    Ok(())
}

/// Installs from Debian the packages of the (program, package) pairs
/// whose program is not on PATH, in one `apt-get install`.
pub fn apt_install(programs: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = programs
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("sock-bench: installing {}", missing.join(", "));
    let apt = [("DEBIAN_FRONTEND", "noninteractive")];
    run_shown("apt-get", &["update", "-qq"], &apt)?;
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(&missing);
    run_shown("apt-get", &args, &apt)?;
    if let Some((program, package)) = programs.iter().find(|(p, _)| !on_path(p)) {
        bail!("apt-get installed {package}, yet `{program}` is not on PATH");
    }
    Ok(())
}

/// Installs what the baselines need and this machine lacks, so that none
/// is skipped: bubblewrap and runsc from Debian (one `apt-get install`),
/// and the image of `docker run` through scripts/base-image (debootstrap
/// of Debian bookworm, a few minutes, once per machine).
pub fn install() -> anyhow::Result<()> {
    apt_install(&PACKAGES)?;
    if !on_path("docker") {
        bail!("`docker` is not installed; the `docker run --rm` baseline needs Docker");
    }
    let server = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .context("start `docker version`")?;
    if !server.status.success() {
        bail!(
            "Docker is not running (`docker version` failed: {}); the `docker run --rm` baseline needs it",
            String::from_utf8_lossy(&server.stderr).trim()
        );
    }
    let image = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("start `docker image inspect`")?;
    if !image.success() {
        eprintln!(
            "sock-bench: image {IMAGE} missing; building it (debootstrap of Debian bookworm, a few minutes)"
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/base-image");
        run_shown(
            &script.display().to_string(),
            &[],
            &[("SOCK_BASE_IMAGE", IMAGE)],
        )?;
    }
    Ok(())
}

fn methods(code: &str) -> Vec<Method> {
    let s = |v: &[&str]| v.iter().map(|a| (*a).to_string()).collect::<Vec<_>>();
    let runner = format!("{code}/runner.py");
    vec![
        Method {
            label: FLOOR,
            argv: s(&[PYTHON, "-c", "pass"]),
            share: 1.0,
        },
        Method {
            label: FORK_EXEC,
            argv: s(&[PYTHON, &runner, code]),
            share: 1.0,
        },
        Method {
            label: "unshare (5 namespaces)",
            argv: s(&[
                "unshare", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", PYTHON,
                &runner, code,
            ]),
            share: 1.0,
        },
        Method {
            label: BWRAP,
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
        },
        Method {
            label: "gVisor runsc do",
            argv: s(&["runsc", "--network=none", "do", PYTHON, &runner, code]),
            share: 0.3,
        },
        Method {
            label: DOCKER,
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
/// uncounted call each, once [`install`] has made them all runnable. A
/// baseline that fails fails the run: none is ever left out.
pub fn run(code: &Path, calls: usize) -> anyhow::Result<Vec<Series>> {
    let code = code.display().to_string();
    let mut results = Vec::new();
    for m in methods(&code) {
        let n = ((calls as f64 * m.share).ceil() as usize).max(3);
        eprintln!("sock-bench: {} × {n}", m.label);
        let check = m.label != FLOOR;
        let mut series = Series::new(m.label, m.argv.join(" "));
        for i in 0..=n {
            let took = one_call(&m.argv, check).with_context(|| format!("baseline {}", m.label))?;
            if i > 0 {
                series.samples.push(took);
            }
        }
        results.push(series);
    }
    Ok(results)
}
