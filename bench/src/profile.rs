//! Where a call's time goes (issue 15's profile, `sock-bench --only
//! profile`): the spans of cold and warm calls, exported by the services
//! to an OTLP receiver in this process, and CPU flame graphs of the whole
//! machine (`perf record -a -g`) while cold starts and 8 warm clients run.
//!
//! Spans say where a call waits (a gRPC hop, the cache, the fork, the
//! function); the flame graphs say what the CPUs do meanwhile, in every
//! process (the services, the Python of sandboxes and zygotes, the bench's
//! own clients and the kernel on their behalf).
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sock_testkit::cluster::Cluster;
use sock_testkit::otlp::{OtlpReceiver, Span};

use crate::baselines;
use crate::run::{self, Machine};
use crate::sock;
use crate::stats::Summary;

const PERF: &str = "perf";
/// The gateway's server span of an Invoke: the root of a call's trace.
const INVOKE_ROOT: &str = "grpc /sock.v1.Gateway/Invoke";
/// Samples per second per CPU; an odd rate so sampling does not beat with
/// periodic work.
pub const PERF_HZ: &str = "999";
/// Between the cold starts of the span breakdown, so each is a lone cold
/// start (back to back, see RESULTS.md, a stream of them queues).
pub const COLD_GAP: Duration = Duration::from_millis(100);

struct Sizes {
    cold: usize,
    warm: usize,
    flame_cold: usize,
    flame_warm: Duration,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                cold: 3,
                warm: 20,
                flame_cold: 5,
                flame_warm: Duration::from_secs(1),
            }
        } else {
            Sizes {
                cold: 40,
                warm: 500,
                flame_cold: 100,
                flame_warm: Duration::from_secs(10),
            }
        }
    }
}

/// One span name's part of a kind of call, over the calls measured.
pub struct SpanRow {
    pub service: String,
    pub name: String,
    /// Calls whose trace had it.
    pub calls: usize,
    /// When it starts after the gateway got the call, and how long it
    /// lasts (summed when a call has several), ms.
    pub start: Summary,
    pub took: Summary,
}

/// The spans of one kind of call.
pub struct Breakdown {
    pub label: String,
    pub calls: usize,
    /// The gateway's server span: the whole call as the gateway saw it.
    pub total: Summary,
    pub rows: Vec<SpanRow>,
}

/// One flame graph and what its samples were spent in.
pub struct Flame {
    pub label: String,
    /// File name of the SVG, beside RESULTS.md.
    pub svg: String,
    /// Share of the CPUs' time that was not idle.
    pub busy: f64,
    /// (process, share of the busy samples), largest first.
    pub by_process: Vec<(String, f64)>,
    /// (kind of work, share of the busy samples), in [`KINDS`] order.
    pub by_kind: Vec<(&'static str, f64)>,
}

pub struct Results {
    pub quick: bool,
    pub machine: Machine,
    pub breakdowns: Vec<Breakdown>,
    pub flames: Vec<Flame>,
}

pub async fn run(bin: &Path, out: &Path, quick: bool) -> anyhow::Result<Results> {
    baselines::apt_install(&[(PERF, "linux-perf")])?;
    let sizes = Sizes::new(quick);
    let mut machine = run::machine(bin);
    machine.load_before = run::loadavg();

    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let traced = [
        ("OTEL_SDK_DISABLED", "false"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
    ];
    let mut breakdowns = Vec::new();
    {
        let cluster = sock::start(bin, &traced);
        breakdowns.push(
            cold_breakdown(
                &receiver,
                &cluster,
                sizes.cold,
                "cold, forked from the root zygote",
            )
            .await?,
        );
        sock::push(&cluster, "warm", &[("f.py", sock::ECHO)]).await?;
        sock::warm_latency(&cluster, "warm", 1, sizes.warm / 10, 1).await?;
        let since = now_ns();
        sock::warm_latency(&cluster, "warm", 1, sizes.warm, 0).await?;
        breakdowns.push(breakdown(&receiver, "warm, 1 client", since..now_ns()).await?);
    }
    {
        let mut env = traced.to_vec();
        env.extend(FRESH);
        let cluster = sock::start(bin, &env);
        breakdowns.push(
            cold_breakdown(
                &receiver,
                &cluster,
                sizes.cold,
                "cold, fresh sandbox (import cache off)",
            )
            .await?,
        );
    }

    let mut flames = Vec::new();
    {
        let cluster = sock::start(bin, &[]);
        flames.push(
            cold_flame(
                &cluster,
                sizes.flame_cold,
                out,
                "flame-cold",
                "cold starts back to back, forked from the root zygote",
            )
            .await?,
        );

        sock::push(&cluster, "warm", &[("f.py", sock::ECHO)]).await?;
        sock::throughput(&cluster, "warm", 8, Duration::from_secs(1)).await?;
        let recording = Recording::start(out, "flame-warm8").await?;
        sock::throughput(&cluster, "warm", 8, sizes.flame_warm).await?;
        flames.push(recording.finish(&format!(
            "8 clients calling a warm function for {} s",
            sizes.flame_warm.as_secs()
        ))?);
    }
    {
        let cluster = sock::start(bin, &FRESH);
        flames.push(
            cold_flame(
                &cluster,
                sizes.flame_cold,
                out,
                "flame-fresh",
                "fresh sandboxes back to back (import cache off)",
            )
            .await?,
        );
    }
    machine.load_after = run::loadavg();
    Ok(Results {
        quick,
        machine,
        breakdowns,
        flames,
    })
}

/// The flame graph `name` of `n` cold starts back to back, "`n` `what`";
/// the functions are pushed first, so only the calls are profiled.
async fn cold_flame(
    cluster: &Cluster,
    n: usize,
    out: &Path,
    name: &str,
    what: &str,
) -> anyhow::Result<Flame> {
    let names =
        sock::never_called(cluster, "cold", &[("f.py", sock::ECHO)], n, Duration::ZERO).await?;
    let recording = Recording::start(out, name).await?;
    sock::first_calls(cluster, &names, Duration::ZERO).await?;
    recording.finish(&format!("{n} {what}"))
}

/// A cluster whose cold starts are fresh sandboxes.
const FRESH: [(&str, &str); 2] = [
    ("SOCK_SANDBOXD_IMPORT_CACHE", "off"),
    ("SOCK_CACHE_IMPORT_CACHE", "off"),
];

fn now_ns() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

/// The spans of `n` lone cold starts of new echo functions, `COLD_GAP`
/// apart; one more is called first, outside the window, so a lazily made
/// zygote is not in it.
async fn cold_breakdown(
    receiver: &OtlpReceiver,
    cluster: &Cluster,
    n: usize,
    label: &str,
) -> anyhow::Result<Breakdown> {
    let names = sock::never_called(cluster, "cold", &[("f.py", sock::ECHO)], n, COLD_GAP).await?;
    let since = now_ns();
    sock::first_calls(cluster, &names, COLD_GAP).await?;
    breakdown(receiver, label, since..now_ns()).await
}

/// The spans of the calls the gateway took in `window` (ns since the
/// epoch), once every one of their traces has arrived.
async fn breakdown(
    receiver: &OtlpReceiver,
    label: &str,
    window: std::ops::Range<u64>,
) -> anyhow::Result<Breakdown> {
    let roots = |spans: &[Span]| -> Vec<Span> {
        spans
            .iter()
            .filter(|s| s.name == INVOKE_ROOT && s.parent_id.is_none())
            .filter(|s| window.contains(&s.start_unix_ns))
            .cloned()
            .collect()
    };
    // Every service exports in batches: wait until the calls' roots are in
    // and nothing more arrived for a while.
    let mut seen = 0;
    let mut quiet = 0;
    for _ in 0..300 {
        let now = receiver.spans().len();
        quiet = if now == seen { quiet + 1 } else { 0 };
        seen = now;
        if quiet >= 20 && !roots(&receiver.spans()).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spans = receiver.spans();
    let roots = roots(&spans);
    if roots.is_empty() {
        bail!("{label}: no trace of a call arrived at the OTLP receiver");
    }
    let mut per_name: BTreeMap<(String, String), (Vec<Duration>, Vec<Duration>)> = BTreeMap::new();
    for root in &roots {
        let mut took: HashMap<(String, String), (u64, u64)> = HashMap::new();
        for span in spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id && s.span_id != root.span_id)
        {
            let entry = took
                .entry((span.service.clone(), span.name.clone()))
                .or_insert((u64::MAX, 0));
            entry.0 = entry.0.min(span.start_unix_ns);
            entry.1 += span.end_unix_ns.saturating_sub(span.start_unix_ns);
        }
        for (key, (start, total)) in took {
            let row = per_name.entry(key).or_default();
            row.0.push(Duration::from_nanos(
                start.saturating_sub(root.start_unix_ns),
            ));
            row.1.push(Duration::from_nanos(total));
        }
    }
    let mut rows: Vec<SpanRow> = per_name
        .into_iter()
        .map(|((service, name), (starts, took))| SpanRow {
            service,
            name,
            calls: took.len(),
            start: Summary::of(&starts),
            took: Summary::of(&took),
        })
        .collect();
    rows.sort_by(|a, b| a.start.p50.total_cmp(&b.start.p50));
    let totals: Vec<Duration> = roots
        .iter()
        .map(|r| Duration::from_nanos(r.end_unix_ns.saturating_sub(r.start_unix_ns)))
        .collect();
    Ok(Breakdown {
        label: label.into(),
        calls: roots.len(),
        total: Summary::of(&totals),
        rows,
    })
}

/// `perf record -a -g` running until [`finish`](Recording::finish).
struct Recording {
    child: Child,
    /// perf's data file, in a dir of its own (mode 0700): never a path in
    /// /tmp that another user could have put a symlink at for root to
    /// write through.
    data: PathBuf,
    _dir: tempfile::TempDir,
    svg: PathBuf,
}

impl Recording {
    async fn start(out: &Path, name: &str) -> anyhow::Result<Recording> {
        let dir = tempfile::Builder::new()
            .prefix("sock-bench-perf-")
            .tempdir()
            .context("make a dir for perf's data")?;
        let data = dir.path().join(format!("{name}.data"));
        let child = Command::new(PERF)
            .args(["record", "-a", "-g", "-F", PERF_HZ, "-q", "-o"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start perf record")?;
        // perf needs a moment to open its events on every CPU.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Recording {
            child,
            data,
            _dir: dir,
            svg: out.join(format!("{name}.svg")),
        })
    }

    /// Stops perf, folds its stacks (root frame: the process) and writes
    /// the flame graph.
    fn finish(mut self, label: &str) -> anyhow::Result<Flame> {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).context("perf's pid")?);
        kill(pid, Signal::SIGINT).context("stop perf record")?;
        let status = self.child.wait().context("wait for perf record")?;
        // Having written its data, perf record re-raises the SIGINT it
        // stopped for and dies of it.
        if !status.success() && status.signal() != Some(Signal::SIGINT as i32) {
            bail!("perf record failed ({status})");
        }
        // `+pid`: "comm pid/tid", which the folder needs to name the pid.
        let script = Command::new(PERF)
            .args(["script", "-F", "+pid", "-i"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()
            .context("run perf script")?;
        if !script.status.success() {
            bail!("perf script failed ({})", script.status);
        }
        let mut options = inferno::collapse::perf::Options::default();
        options.include_pid = true;
        options.nthreads = 1;
        let mut folded = Vec::new();
        inferno::collapse::Collapse::collapse(
            &mut inferno::collapse::perf::Folder::from(options),
            script.stdout.as_slice(),
            &mut folded,
        )
        .context("fold perf's stacks")?;
        let stacks = by_process(&folded);
        let mut flame = inferno::flamegraph::Options::default();
        flame.title = label.to_string();
        let lines: Vec<String> = stacks
            .iter()
            .map(|(stack, n)| format!("{stack} {n}"))
            .collect();
        let file = std::fs::File::create(&self.svg)
            .with_context(|| format!("create {}", self.svg.display()))?;
        inferno::flamegraph::from_lines(
            &mut flame,
            lines.iter().map(String::as_str),
            std::io::BufWriter::new(file),
        )
        .context("draw the flame graph")?;
        Ok(summarise(label, &self.svg, &stacks))
    }
}

/// Folded stacks with the root frame `comm-pid` replaced by the process
/// the pid was (its executable, while it still runs; else its command),
/// so every thread of a service is one tower.
fn by_process(folded: &[u8]) -> Vec<(String, u64)> {
    let mut names: HashMap<String, String> = HashMap::new();
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    for line in folded.lines().map_while(Result::ok) {
        let Some((stack, n)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        let (root, rest) = stack.split_once(';').unwrap_or((stack, ""));
        let process = names
            .entry(root.to_string())
            .or_insert_with(|| process_name(root))
            .clone();
        let stack = if rest.is_empty() {
            process
        } else {
            format!("{process};{rest}")
        };
        *stacks.entry(stack).or_default() += n;
    }
    stacks.into_iter().collect()
}

fn process_name(root: &str) -> String {
    let (comm, pid) = root.rsplit_once('-').unwrap_or((root, ""));
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
    match exe {
        Some(exe) if exe.starts_with("python") => "python3".into(),
        Some(exe) => exe,
        None if comm.starts_with("python") => "python3".into(),
        None => comm.to_string(),
    }
}

/// Kinds of work, each recognised by a frame of its stack; a sample
/// counts for the first kind one of its frames matches.
pub const KINDS: [(&str, &[&str]); 8] = [
    (
        "mounts",
        &["mount", "open_tree", "pivot_root", "chroot", "mnt_"],
    ),
    ("cgroup files and moves", &["cgroup", "kernfs_fop"]),
    (
        "namespaces",
        &[
            "unshare",
            "setns",
            "copy_namespaces",
            "copy_net_ns",
            "create_new_namespaces",
        ],
    ),
    (
        "fork, exec, exit",
        &[
            "copy_process",
            "execve",
            "do_exit",
            "exit_mmap",
            "kernel_clone",
            "wait4",
        ],
    ),
    ("seccomp", &["seccomp"]),
    (
        "gRPC and HTTP/2",
        &["h2::", "tonic::", "hyper::", "tower::", "prost::"],
    ),
    ("JSON", &["serde_json"]),
    (
        "Python interpreter",
        &["_PyEval", "PyObject", "_Py", "libpython"],
    ),
];

/// The idle task's name: a CPU with nothing to run.
const IDLE: &str = "swapper";

fn summarise(label: &str, svg: &Path, stacks: &[(String, u64)]) -> Flame {
    let all: u64 = stacks.iter().map(|(_, n)| n).sum();
    let idle: u64 = stacks
        .iter()
        .filter(|(stack, _)| stack.split(';').next() == Some(IDLE))
        .map(|(_, n)| n)
        .sum();
    let busy = all - idle;
    let share = |n: u64| n as f64 / busy.max(1) as f64;
    let mut processes: BTreeMap<&str, u64> = BTreeMap::new();
    let mut kinds = [0u64; KINDS.len()];
    for (stack, n) in stacks {
        let process = stack.split(';').next().unwrap_or("");
        if process == IDLE {
            continue;
        }
        *processes.entry(process).or_default() += n;
        if let Some(i) = KINDS
            .iter()
            .position(|(_, marks)| marks.iter().any(|m| stack.contains(m)))
        {
            kinds[i] += n;
        }
    }
    let mut by_process: Vec<(String, f64)> = processes
        .into_iter()
        .map(|(p, n)| (p.to_string(), share(n)))
        .collect();
    by_process.sort_by(|a, b| b.1.total_cmp(&a.1));
    Flame {
        label: label.into(),
        svg: svg
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        busy: busy as f64 / all.max(1) as f64,
        by_process,
        by_kind: KINDS
            .iter()
            .zip(kinds)
            .map(|((kind, _), n)| (*kind, share(n)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_counts_for_its_process_and_the_first_kind_it_matches() {
        let stacks = vec![
            ("sock-sandboxd;tokio;do_mount;cgroup_attach".to_string(), 3),
            ("sock-gateway;h2::proto::poll".to_string(), 1),
            ("swapper;do_idle".to_string(), 4),
        ];
        let flame = summarise("t", Path::new("/x/flame.svg"), &stacks);
        assert_eq!(flame.busy, 0.5, "idle CPUs are not work");
        assert_eq!(flame.svg, "flame.svg");
        assert_eq!(
            flame.by_process,
            [
                ("sock-sandboxd".to_string(), 0.75),
                ("sock-gateway".to_string(), 0.25)
            ]
        );
        let kind = |k: &str| flame.by_kind.iter().find(|(n, _)| *n == k).map(|(_, s)| *s);
        assert_eq!(kind("mounts"), Some(0.75), "mounts come before cgroups");
        assert_eq!(kind("cgroup files and moves"), Some(0.0));
        assert_eq!(kind("gRPC and HTTP/2"), Some(0.25));
    }

    #[test]
    fn the_threads_of_a_process_fold_into_one_tower() {
        let folded = b"tokio-runtime-w-999999999;a;b 2\ntokio-runtime-w-999999999;a 1\npython3-999999998;x 4\n";
        let stacks = by_process(folded);
        assert_eq!(
            stacks,
            [
                ("python3;x".to_string(), 4),
                ("tokio-runtime-w;a".to_string(), 1),
                ("tokio-runtime-w;a;b".to_string(), 2),
            ]
        );
    }
}
