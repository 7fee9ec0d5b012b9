//! Cold starts three ways, for bench/zygote.sh: a fresh sandbox, a fork
//! of the root zygote, and a fork of a zygote that already imported the
//! function's (generated, slow to import) package. Each sample is the
//! time from asking for a sandbox to the function's first answer; the
//! sandbox is destroyed after, outside the measurement. Needs root.
//!
//! Usage: zygote_bench [CALLS] [SOCK_SANDBOXD]; with SOCK_SANDBOXD_CGROUP_FAVOR_DYNMODS=true
//! sandboxd's `cgroup_favor_dynmods` is on.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sock_sandboxd::{Config, Outcome, Sandbox, SandboxSpec, Sandboxes, ZygoteSpec};

const TIMEOUT: Duration = Duration::from_secs(30);
/// Modules and functions per module of the generated package: about
/// 100 ms to import on the test machine (no .pyc: sandboxes write none).
const MODULES: usize = 30;
const FUNCTIONS: usize = 120;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let calls: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let init: PathBuf = args
        .next()
        .map_or_else(
            || PathBuf::from("target/release/sock-sandboxd"),
            PathBuf::from,
        )
        .canonicalize()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(calls, init))
}

/// `heavypkg`: MODULES submodules of FUNCTIONS functions each, all
/// imported by its `__init__`.
fn generate_package(dir: &Path) -> anyhow::Result<()> {
    let pkg = dir.join("heavypkg");
    std::fs::create_dir_all(&pkg)?;
    let mut init = String::new();
    for m in 0..MODULES {
        let mut module = String::new();
        for f in 0..FUNCTIONS {
            module.push_str(&format!(
                "def f{f}(x, y={f}):\n    total = 0\n    for i in range(x):\n        total += i * y - {m}\n    return {{'m': {m}, 'f': {f}, 't': total}}\n\n"
            ));
        }
        std::fs::write(pkg.join(format!("m{m}.py")), module)?;
        init.push_str(&format!("from . import m{m}\n"));
    }
    std::fs::write(pkg.join("__init__.py"), init)?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn first_answer(mut sandbox: Sandbox, started: Instant) -> anyhow::Result<Duration> {
    let outcome = sandbox.invoke("bench", b"{}", TIMEOUT).await?;
    let took = started.elapsed();
    sandbox.destroy().await;
    match outcome {
        Outcome::Result(body) if body == b"true" => Ok(took),
        other => anyhow::bail!("unexpected answer {other:?}"),
    }
}

async fn bench(calls: usize, init: PathBuf) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let packages = dir.path().join("packages");
    generate_package(&packages)?;
    let code = dir.path().join("code");
    std::fs::create_dir_all(&code)?;
    std::fs::write(
        code.join("f.py"),
        "import heavypkg\n\ndef f(event):\n    return heavypkg.m0.f0(3)['m'] == 0\n",
    )?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let sandboxes = Sandboxes::new(Config {
        data_dir: dir.path().join("data"),
        instance: format!("bench-zygote-{}", std::process::id()),
        init_program: Some(init),
        cgroup_favor_dynmods: std::env::var("SOCK_SANDBOXD_CGROUP_FAVOR_DYNMODS")
            .is_ok_and(|v| v == "true"),
        ..Config::default()
    })?;
    let spec = SandboxSpec {
        function: "bench".into(),
        code_dir: code,
        package_dirs: vec![packages.clone()],
        ..SandboxSpec::default()
    };
    let root = sandboxes
        .create_zygote(
            &ZygoteSpec {
                id: "root".into(),
                ..ZygoteSpec::default()
            },
            TIMEOUT,
        )
        .await?;
    let heavy = root
        .fork_zygote(
            &ZygoteSpec {
                id: "root/heavypkg".into(),
                package_dirs: vec![packages],
                imports: vec!["heavypkg".into()],
            },
            TIMEOUT,
        )
        .await?;

    let mut results: Vec<(&str, Vec<Duration>)> = Vec::new();
    let ways = [
        ("fresh sandbox", None, false),
        ("fork of the root zygote", Some(&root), true),
        ("fork of the heavypkg zygote", Some(&heavy), true),
        ("same, no parked child", Some(&heavy), false),
    ];
    for (way, zygote, spare) in ways {
        let mut samples = Vec::with_capacity(calls);
        // One warm-up, not counted: page cache, cgroup pool.
        for i in 0..=calls {
            if let (Some(zygote), true) = (zygote, spare) {
                // As sandboxd does in the background after each fork.
                zygote.park_spare().await?;
            }
            let started = Instant::now();
            let sandbox = match zygote {
                None => sandboxes.create(spec.clone()).await?,
                Some(zygote) => zygote.fork(spec.clone()).await?,
            };
            let took = first_answer(sandbox, started).await?;
            if i > 0 {
                samples.push(took);
            }
        }
        samples.sort();
        results.push((way, samples));
    }
    heavy.destroy().await;
    root.destroy().await;

    let fresh_p50 = percentile(&results[0].1, 50.0);
    println!("| cold start to first answer ({calls} calls each) | p50 | p99 | p50 vs fresh |");
    println!("|---|---|---|---|");
    for (way, samples) in &results {
        let p50 = percentile(samples, 50.0);
        let p99 = percentile(samples, 99.0);
        println!(
            "| {way} | {:.1} ms | {:.1} ms | {:.1}× faster |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            fresh_p50.as_secs_f64() / p50.as_secs_f64()
        );
    }
    Ok(())
}
