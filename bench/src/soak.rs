//! The soak: one cluster whose memory pool is smaller than the demand,
//! under a steady mix of warm calls, cold starts of more functions than
//! the pool keeps, and abusive functions (a memory hog, an endless loop, an
//! output flood, one that raises), for minutes. Every few seconds it samples
//! sandboxd's RSS and open fds, the cgroups and processes of its instance,
//! and the latency and outcomes of that window's calls; at the end it says
//! how much each grew between the first and the last third of the run.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sock_proto::v1::ErrorKind;
use sock_proto::v1::gateway_client::GatewayClient;
use sock_proto::v1::invoke_response::Outcome;
use sock_proto::v1::{InvokeRequest, StatusResponse};
use sock_testkit::cluster::{Authed, Cluster, leftover_cgroups, sandbox_pids};
use sock_testkit::wheels;

use crate::run::{self, Machine};
use crate::sock::{self, PAYLOAD};
use crate::stats::Summary;

/// sandboxd's pool and limits: the pool holds
/// `(POOL_MB - the root zygote's 256 MB) / MEMORY_MB` = 8 sandboxes idle at
/// their limit, and a sandbox stays idle (not paused) for `PAUSE_AFTER_MS`
/// after its call, so the cold functions ask for far more than that and
/// sandboxd must evict.
pub const POOL_MB: u64 = 768;
pub const MEMORY_MB: u64 = 64;
pub const PAUSE_AFTER_MS: u64 = 5000;
pub const CLIENTS: usize = 6;
/// The budget of every call but the endless loop's.
pub const BUDGET_MS: u32 = 10_000;
/// The endless loop's budget: it always runs into it.
pub const LOOP_MS: u32 = 1000;
/// A call with no answer by its budget and this has hung.
pub const HANG_MARGIN: Duration = Duration::from_secs(10);
/// Functions called warm, and abusive ones (see [`pick`]).
const WARM: usize = 2;
const ABUSIVE: usize = 4;
/// Untyped failures kept word for word for the report.
const KEEP_UNTYPED: usize = 10;

const HOG: &str = "def f(event):\n    hog = b'x' * (512 << 20)\n    return len(hog)\n";
const LOOP: &str = "def f(event):\n    while True:\n        pass\n";
/// 2 MiB of stdout, twice what sandboxd keeps of one call.
const FLOOD: &str = "import sys\n\ndef f(event):\n    line = 'x' * 1023 + '\\n'\n    \
                     for _ in range(2048):\n        sys.stdout.write(line)\n    \
                     sys.stdout.flush()\n    return 'flooded'\n";
const RAISE: &str = "def f(event):\n    raise ValueError('raised on purpose')\n";
/// The package one in four cold functions imports: a wheel built here,
/// which each function's `requirements.txt` pins and the node's cache
/// installs from a local wheel dir.
const PACKAGE: (&str, &str) = ("soakpkg", "1.0");
const WITH_PACKAGE: &str = "import soakpkg\n\ndef f(event):\n    return event\n";

/// How long and how hard.
#[derive(Clone, Debug)]
pub struct Sizes {
    pub duration: Duration,
    pub sample_every: Duration,
    /// Samples before this are left out of the growth verdicts: the
    /// cluster filling its pool and making its zygote.
    pub warmup: Duration,
    pub cold_functions: usize,
}

impl Sizes {
    pub fn new(quick: bool, minutes: Option<u64>) -> Sizes {
        let duration = match (minutes, quick) {
            (Some(m), _) => Duration::from_secs(m * 60),
            (None, true) => Duration::from_secs(60),
            (None, false) => Duration::from_secs(30 * 60),
        };
        Sizes {
            duration,
            sample_every: Duration::from_secs(if quick { 5 } else { 10 }),
            warmup: duration / 10,
            cold_functions: if quick { 24 } else { 48 },
        }
    }
}

/// What a call of each function must answer.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Warm,
    Cold,
    Hog,
    Loop,
    Flood,
    Raise,
}

impl Kind {
    /// The typed error this function must fail with, or `None` when it
    /// must answer.
    fn expected_error(self) -> Option<ErrorKind> {
        match self {
            Kind::Warm | Kind::Cold | Kind::Flood => None,
            Kind::Hog => Some(ErrorKind::OutOfMemory),
            Kind::Loop => Some(ErrorKind::Timeout),
            Kind::Raise => Some(ErrorKind::Function),
        }
    }

    fn budget_ms(self) -> u32 {
        if self == Kind::Loop {
            LOOP_MS
        } else {
            BUDGET_MS
        }
    }
}

/// How one call ended.
enum Ended {
    /// The function's answer, or its own expected typed error.
    Expected,
    /// A typed error the function should not have had: another call
    /// disturbed it (the pool full, the node overloaded).
    OtherTyped(ErrorKind),
    /// An answer that is wrong, or an error with no kind.
    Untyped(String),
    Hung,
}

/// The calls of one sample window.
#[derive(Default)]
struct Window {
    /// Latency of the echo calls (warm and cold) that answered.
    echo: Vec<Duration>,
    counts: Counts,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Answered as they should (echo, flood).
    pub answered: usize,
    /// The abusive functions' own typed errors.
    pub typed: usize,
    /// Typed errors of calls that should not have failed.
    pub other_typed: usize,
    pub untyped: usize,
    pub hung: usize,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.answered += other.answered;
        self.typed += other.typed;
        self.other_typed += other.other_typed;
        self.untyped += other.untyped;
        self.hung += other.hung;
    }

    pub fn calls(&self) -> usize {
        self.answered + self.typed + self.other_typed + self.untyped + self.hung
    }
}

/// One sample: sandboxd and its instance at `at`, and the calls that
/// ended since the previous sample.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Duration,
    pub rss_mib: f64,
    pub fds: usize,
    /// Cgroups under `sock/<instance>`, distinct names over every
    /// hierarchy (sandboxes' and the ready pool's).
    pub cgroups: usize,
    /// Processes in those cgroups.
    pub processes: usize,
    /// Of the window's echo calls.
    pub echo: Summary,
    pub counts: Counts,
}

/// One series' growth between the first and the last third of the
/// samples after warm-up.
pub struct Growth {
    pub series: &'static str,
    pub first: f64,
    pub last: f64,
}

impl Growth {
    pub fn percent(&self) -> f64 {
        if self.first == 0.0 {
            return if self.last == 0.0 { 0.0 } else { f64::INFINITY };
        }
        100.0 * (self.last - self.first) / self.first
    }

    /// The verdict line.
    pub fn verdict(&self) -> String {
        format!(
            "{}: grew by {:+.1}% (mean of the first third after warm-up {:.1}, of the last third {:.1})",
            self.series,
            self.percent(),
            self.first,
            self.last
        )
    }
}

/// One figure of a sample, as a number.
type Value = fn(&Sample) -> f64;

pub struct Results {
    pub command: String,
    pub quick: bool,
    pub sizes: Sizes,
    pub machine: Machine,
    pub samples: Vec<Sample>,
    pub totals: Counts,
    /// The first untyped failures and other typed errors, word for word.
    pub untyped: Vec<String>,
    pub other_typed: Vec<String>,
    /// sandboxd's Status at the end.
    pub status: StatusResponse,
    /// Left behind once the cluster stopped.
    pub leftover_cgroups: usize,
    pub leftover_processes: usize,
}

impl Results {
    pub fn growth(&self) -> Vec<Growth> {
        let after: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.at >= self.sizes.warmup)
            .collect();
        let third = (after.len() / 3).max(1);
        let mean = |part: &[&Sample], value: Value| {
            part.iter().map(|s| value(s)).sum::<f64>() / part.len().max(1) as f64
        };
        let (first, last) = (
            &after[..third.min(after.len())],
            &after[after.len().saturating_sub(third)..],
        );
        let series: [(&'static str, Value); 4] = [
            ("sandboxd RSS (MiB)", |s| s.rss_mib),
            ("sandboxd open fds", |s| s.fds as f64),
            ("cgroups of the instance", |s| s.cgroups as f64),
            ("processes in them", |s| s.processes as f64),
        ];
        series
            .into_iter()
            .map(|(name, value)| Growth {
                series: name,
                first: mean(first, value),
                last: mean(last, value),
            })
            .collect()
    }
}

pub async fn run(
    bin: &std::path::Path,
    quick: bool,
    minutes: Option<u64>,
) -> anyhow::Result<Results> {
    let sizes = Sizes::new(quick, minutes);
    let mut machine = run::machine(bin);
    // Kept until the cluster has stopped: its cache installs from here.
    let wheels = tokio::task::spawn_blocking(|| {
        let dir = wheels::wheel_dir();
        wheels::module_wheel(dir.path(), PACKAGE.0, PACKAGE.1, &[], "VALUE = 1\n");
        dir
    })
    .await?;
    let env = [
        ("SOCK_CACHE_FIND_LINKS", wheels.path().display().to_string()),
        ("SOCK_SANDBOXD_MEM_POOL_MB", POOL_MB.to_string()),
        ("SOCK_SANDBOXD_MEMORY_MB", MEMORY_MB.to_string()),
        ("SOCK_SANDBOXD_PAUSE_AFTER_MS", PAUSE_AFTER_MS.to_string()),
    ];
    let cluster = sock::start_shared(bin, &env).await?;
    let soaked = soak(&cluster, &sizes).await;
    let instance = cluster.instance.clone();
    // Every task holding the cluster has ended.
    if let Some(cluster) = Arc::into_inner(cluster) {
        sock::stop(cluster).await?;
    }
    drop(wheels);
    let Soaked {
        samples,
        totals,
        untyped,
        other_typed,
        status,
    } = soaked?;
    machine.load_after = run::loadavg();
    Ok(Results {
        command: command(&machine.profile, quick, minutes),
        quick,
        sizes,
        machine,
        samples,
        totals,
        untyped,
        other_typed,
        status,
        leftover_cgroups: leftover_cgroups(&instance).len(),
        leftover_processes: sandbox_pids(&instance).len(),
    })
}

/// Says how the soak went (its report written to `out`); fails the run on
/// any untyped failure or hung call, never on timing or growth.
pub fn verdict(r: &Results, out: &std::path::Path) -> anyhow::Result<()> {
    for g in r.growth() {
        println!("sock-bench: soak: {}", g.verdict());
    }
    let t = &r.totals;
    println!(
        "sock-bench: soak: {} calls: {} answered, {} typed failures of the abusive functions, \
         {} disturbed, {} untyped, {} hung; results in {}",
        t.calls(),
        t.answered,
        t.typed,
        t.other_typed,
        t.untyped,
        t.hung,
        out.join("RELIABILITY.md").display()
    );
    if t.untyped > 0 || t.hung > 0 {
        anyhow::bail!(
            "soak: {} untyped failures and {} hung calls (every call must be answered or fail \
             with a typed error): {:?}",
            t.untyped,
            t.hung,
            r.untyped
        );
    }
    Ok(())
}

/// The command that reruns this soak with binaries of `profile`.
fn command(profile: &str, quick: bool, minutes: Option<u64>) -> String {
    let release = if profile == "release" {
        " --release"
    } else {
        ""
    };
    let mut c = format!("sudo cargo run{release} -p sock-bench -- --only soak");
    if quick {
        c.push_str(" --quick");
    }
    if let Some(m) = minutes {
        c.push_str(&format!(" --minutes {m}"));
    }
    c
}

/// What the load and the samples saw, before the cluster stops.
struct Soaked {
    samples: Vec<Sample>,
    totals: Counts,
    untyped: Vec<String>,
    other_typed: Vec<String>,
    status: StatusResponse,
}

async fn soak(cluster: &Arc<Cluster>, sizes: &Sizes) -> anyhow::Result<Soaked> {
    let sandboxd = cluster.pid("sandboxd").context("sandboxd's pid")?;
    let mut functions: Vec<(String, Kind)> = vec![
        ("warm-0".into(), Kind::Warm),
        ("warm-1".into(), Kind::Warm),
        ("hog".into(), Kind::Hog),
        ("loop".into(), Kind::Loop),
        ("flood".into(), Kind::Flood),
        ("raise".into(), Kind::Raise),
    ];
    for (name, kind) in &functions {
        let code = match kind {
            Kind::Hog => HOG,
            Kind::Loop => LOOP,
            Kind::Flood => FLOOD,
            Kind::Raise => RAISE,
            Kind::Warm | Kind::Cold => sock::ECHO,
        };
        sock::push(cluster, name, &[("f.py", code)]).await?;
    }
    eprintln!(
        "sock-bench: soak: pushing {} cold functions ({} with a package)",
        sizes.cold_functions,
        sizes.cold_functions / 4
    );
    let with_package = sizes.cold_functions / 4;
    let requirements = format!("{}=={}\n", PACKAGE.0, PACKAGE.1);
    let cold = sock::push_all(
        cluster,
        "cold",
        &[("f.py", sock::ECHO)],
        sizes.cold_functions - with_package,
    )
    .await?;
    let package = sock::push_all(
        cluster,
        "package",
        &[("f.py", WITH_PACKAGE), ("requirements.txt", &requirements)],
        with_package,
    )
    .await?;
    functions.extend(
        cold.into_iter()
            .chain(package)
            .map(|name| (name, Kind::Cold)),
    );
    let functions: Arc<[(String, Kind)]> = functions.into();

    eprintln!(
        "sock-bench: soak: {CLIENTS} clients for {:?}, a pool of {POOL_MB} MB",
        sizes.duration
    );
    let window = Arc::new(Mutex::new(Window::default()));
    let kept = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let stop = Arc::new(AtomicBool::new(false));
    let next_cold = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for index in 0..CLIENTS {
        let client = sock::gateway(cluster).await?;
        let (functions, window, kept, stop, next_cold) = (
            functions.clone(),
            window.clone(),
            kept.clone(),
            stop.clone(),
            next_cold.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut client = client;
            let mut turn = index;
            while !stop.load(Ordering::Relaxed) {
                let (name, kind) = pick(&functions, turn, &next_cold);
                turn += 1;
                let started = Instant::now();
                let ended = call(&mut client, name, kind).await;
                let took = started.elapsed();
                let mut w = window.lock().expect("no panic while held");
                match ended {
                    Ended::Expected => {
                        if kind.expected_error().is_some() {
                            w.counts.typed += 1;
                        } else {
                            w.counts.answered += 1;
                        }
                        if matches!(kind, Kind::Warm | Kind::Cold) {
                            w.echo.push(took);
                        }
                    }
                    Ended::OtherTyped(e) => {
                        w.counts.other_typed += 1;
                        keep(&kept, false, format!("{name}: {}", e.name()));
                    }
                    Ended::Untyped(m) => {
                        w.counts.untyped += 1;
                        keep(&kept, true, format!("{name}: {m}"));
                    }
                    Ended::Hung => {
                        w.counts.hung += 1;
                        keep(&kept, true, format!("{name}: no answer in {took:?}"));
                    }
                }
            }
        }));
    }

    let sampled = sample_until(&cluster.instance, sandboxd, sizes, &window).await;
    // The clients stop even when sampling failed.
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }
    let (samples, mut totals) = sampled?;
    // The calls that ended after the last sample.
    let rest = std::mem::take(&mut *window.lock().expect("no panic while held"));
    totals.add(&rest.counts);
    let status = sock::status(cluster).await?;
    let (untyped, other_typed) = std::mem::take(&mut *kept.lock().expect("no panic while held"));
    Ok(Soaked {
        samples,
        totals,
        untyped,
        other_typed,
        status,
    })
}

/// The function a client calls on its `turn`, of `functions` in the
/// order [`soak`] pushes them (the [`WARM`] warm ones, the [`ABUSIVE`]
/// abusive ones, then the cold ones): of every 10 calls, 5 warm, 4 cold
/// (the next cold function, round all clients) and 1 abusive (each in
/// turn).
fn pick<'a>(
    functions: &'a [(String, Kind)],
    turn: usize,
    next_cold: &AtomicUsize,
) -> (&'a str, Kind) {
    let first_cold = WARM + ABUSIVE;
    let i = match turn % 10 {
        0 | 2 | 4 | 6 | 8 => turn / 10 % WARM,
        1 | 3 | 5 | 7 => {
            first_cold + next_cold.fetch_add(1, Ordering::Relaxed) % (functions.len() - first_cold)
        }
        _ => WARM + turn / 10 % ABUSIVE,
    };
    let (name, kind) = &functions[i];
    (name.as_str(), *kind)
}

/// One call of `name`, judged by what `kind` must answer.
async fn call(client: &mut GatewayClient<Authed>, name: &str, kind: Kind) -> Ended {
    let budget = kind.budget_ms();
    let request = InvokeRequest {
        function: name.into(),
        payload: PAYLOAD.to_vec(),
        timeout_ms: Some(budget),
    };
    let limit = Duration::from_millis(u64::from(budget)) + HANG_MARGIN;
    let answer = match tokio::time::timeout(limit, client.invoke(request)).await {
        Err(_) => return Ended::Hung,
        Ok(Err(status)) => {
            return match ErrorKind::stamped(&status) {
                Some(e) => Ended::OtherTyped(e),
                None => Ended::Untyped(format!("{status:?}")),
            };
        }
        Ok(Ok(answer)) => answer.into_inner().outcome,
    };
    match (answer, kind.expected_error()) {
        (Some(Outcome::Result(r)), None) if answers(kind, &r) => Ended::Expected,
        (Some(Outcome::Error(e)), Some(expected)) if e.kind() == expected => Ended::Expected,
        (Some(Outcome::Error(e)), _) if e.kind() != ErrorKind::Unspecified => {
            Ended::OtherTyped(e.kind())
        }
        (other, _) => Ended::Untyped(format!("answered {other:?}")),
    }
}

/// Samples every `sizes.sample_every` until `sizes.duration` is up, each
/// with the calls that ended in its window; answers the samples and the
/// calls' totals.
async fn sample_until(
    instance: &str,
    sandboxd: u32,
    sizes: &Sizes,
    window: &Mutex<Window>,
) -> anyhow::Result<(Vec<Sample>, Counts)> {
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut totals = Counts::default();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + sizes.sample_every,
        sizes.sample_every,
    );
    while started.elapsed() < sizes.duration {
        tick.tick().await;
        let w = std::mem::take(&mut *window.lock().expect("no panic while held"));
        let sample = sample(instance, sandboxd, started.elapsed(), &w)?;
        eprintln!(
            "sock-bench: soak: {:>4.0} s: RSS {:.1} MiB, {} fds, {} cgroups, {} processes, \
             echo p50 {:.1} ms p99 {:.1} ms, {:?}",
            sample.at.as_secs_f64(),
            sample.rss_mib,
            sample.fds,
            sample.cgroups,
            sample.processes,
            sample.echo.p50,
            sample.echo.p99,
            sample.counts
        );
        totals.add(&sample.counts);
        samples.push(sample);
    }
    Ok((samples, totals))
}

/// Whether `result` is what a call of `kind` returns.
fn answers(kind: Kind, result: &[u8]) -> bool {
    match kind {
        Kind::Flood => result == b"\"flooded\"",
        // Python's json.dumps puts a space after ':'.
        _ => result.iter().filter(|b| **b != b' ').eq(PAYLOAD),
    }
}

fn keep(kept: &Mutex<(Vec<String>, Vec<String>)>, untyped: bool, line: String) {
    let mut kept = kept.lock().expect("no panic while held");
    let list = if untyped { &mut kept.0 } else { &mut kept.1 };
    if list.len() < KEEP_UNTYPED {
        list.push(line);
    }
}

fn sample(instance: &str, sandboxd: u32, at: Duration, w: &Window) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{sandboxd}/status"))
        .with_context(|| format!("sandboxd (pid {sandboxd}) is gone"))?;
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS of sandboxd")?;
    let fds = std::fs::read_dir(format!("/proc/{sandboxd}/fd"))?.count();
    let mut names = std::collections::BTreeSet::new();
    for dir in leftover_cgroups(instance) {
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.path().is_dir() {
                names.insert(entry.file_name());
            }
        }
    }
    Ok(Sample {
        at,
        rss_mib: rss_kib / 1024.0,
        fds,
        cgroups: names.len(),
        processes: sandbox_pids(instance).len(),
        echo: Summary::of(&w.echo),
        counts: w.counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ten_calls_are_five_warm_four_cold_one_abusive() {
        let mut functions: Vec<(String, Kind)> = [
            Kind::Warm,
            Kind::Warm,
            Kind::Hog,
            Kind::Loop,
            Kind::Flood,
            Kind::Raise,
        ]
        .into_iter()
        .map(|k| (String::new(), k))
        .collect();
        functions.extend((0..3).map(|_| (String::new(), Kind::Cold)));
        let next_cold = AtomicUsize::new(0);
        let kinds: Vec<Kind> = (0..40)
            .map(|turn| pick(&functions, turn, &next_cold).1)
            .collect();
        let count = |k: Kind| kinds.iter().filter(|x| **x == k).count();
        assert_eq!(count(Kind::Warm), 20);
        assert_eq!(count(Kind::Cold), 16);
        for abusive in [Kind::Hog, Kind::Loop, Kind::Flood, Kind::Raise] {
            assert_eq!(count(abusive), 1, "each abusive function in turn");
        }
        assert_eq!(next_cold.load(Ordering::Relaxed), 16);
    }

    fn sample(at: u64, rss_mib: f64, fds: usize) -> Sample {
        Sample {
            at: Duration::from_secs(at),
            rss_mib,
            fds,
            cgroups: 20,
            processes: 0,
            echo: Summary::default(),
            counts: Counts::default(),
        }
    }

    #[test]
    fn growth_compares_the_last_third_with_the_first_after_warmup() {
        let sizes = Sizes::new(true, None);
        // Warm-up (6 s) left out, then thirds of 3 samples each.
        let samples = [
            (0, 5.0, 10),
            (5, 10.0, 50),
            (10, 10.0, 50),
            (15, 10.0, 50),
            (20, 12.0, 50),
            (25, 12.0, 50),
            (30, 12.0, 50),
            (35, 15.0, 50),
            (40, 15.0, 50),
            (45, 15.0, 50),
        ]
        .map(|(at, rss, fds)| sample(at, rss, fds));
        let results = Results {
            command: String::new(),
            quick: true,
            sizes,
            machine: Machine::default(),
            samples: samples.to_vec(),
            totals: Counts::default(),
            untyped: Vec::new(),
            other_typed: Vec::new(),
            status: StatusResponse::default(),
            leftover_cgroups: 0,
            leftover_processes: 0,
        };
        let growth = results.growth();
        assert_eq!(growth[0].first, 10.0);
        assert_eq!(growth[0].last, 15.0);
        assert!((growth[0].percent() - 50.0).abs() < 1e-9);
        assert_eq!(growth[1].percent(), 0.0, "fds flat after warm-up");
        assert_eq!(growth[3].percent(), 0.0, "none before, none after");
    }
}
