//! What sock itself is measured on, through its public gRPC API: warm
//! calls, throughput, cold starts and sandbox churn.
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sock_cli::tokens::Kind;
use sock_proto::v1::cache_client::CacheClient;
use sock_proto::v1::gateway_client::GatewayClient;
use sock_proto::v1::invoke_response::Outcome;
use sock_proto::v1::{
    ErrorKind, FunctionRef, InvokeRequest, PrepareRequest, StatusRequest, StatusResponse,
};
use sock_testkit::cluster::{Authed, Cluster};
use tokio::sync::Barrier;

pub const ECHO: &str = "def f(event):\n    return event\n";
/// Ends its own runtime, so every call needs a new sandbox and the old one
/// is destroyed: the creation rate, measured end to end.
const EXIT: &str = "import os\n\ndef f(event):\n    os._exit(0)\n";
pub const PAYLOAD: &[u8] = br#"{"hello":"world"}"#;

/// A new connection to the gateway: one per simulated client.
pub async fn gateway(cluster: &Cluster) -> anyhow::Result<GatewayClient<Authed>> {
    Ok(cluster.gateway().await)
}

pub async fn status(cluster: &Cluster) -> anyhow::Result<StatusResponse> {
    Ok(cluster
        .sandboxd()
        .await
        .status(StatusRequest {})
        .await?
        .into_inner())
}

/// Pushes a function of `files` (path, contents) and makes the node's
/// cache prepare it (code unpacked, packages installed), so a cold call
/// measures the sandbox, not the download.
pub async fn push(cluster: &Cluster, name: &str, files: &[(&str, &str)]) -> anyhow::Result<()> {
    let version = cluster
        .push(name, files)
        .await
        .with_context(|| format!("push {name}"))?;
    CacheClient::new(cluster.authed(&cluster.endpoints.cache, Kind::Node).await)
        .prepare(PrepareRequest {
            function: Some(FunctionRef {
                name: name.into(),
                version,
            }),
            ..PrepareRequest::default()
        })
        .await
        .with_context(|| format!("prepare {name}"))?;
    Ok(())
}

async fn invoke(client: &mut GatewayClient<Authed>, name: &str) -> anyhow::Result<Outcome> {
    let answer = client
        .invoke(InvokeRequest {
            function: name.into(),
            payload: PAYLOAD.to_vec(),
            timeout_ms: None,
        })
        .await
        .with_context(|| format!("invoke {name}"))?
        .into_inner();
    answer.outcome.context("answer without an outcome")
}

/// One echo call that must come back unchanged.
async fn echo(client: &mut GatewayClient<Authed>, name: &str) -> anyhow::Result<()> {
    match invoke(client, name).await? {
        // Python's json.dumps puts a space after ':'.
        Outcome::Result(r) if r.iter().filter(|b| **b != b' ').eq(PAYLOAD) => Ok(()),
        other => bail!("{name} answered {other:?}"),
    }
}

/// How a call of the density run ended, other than echoing its event.
pub enum Refusal {
    /// The platform killed the call: out of memory, or its process died.
    Killed(String),
    /// The node's memory pool had no room for the call by its deadline.
    PoolFull(String),
}

/// One echo call that may be refused: `Ok(None)` when the event came back
/// unchanged, the refusal when the pool was full or the call was killed
/// (OOM or its process died); any other answer is an error.
pub async fn echo_or_refused(
    client: &mut GatewayClient<Authed>,
    name: &str,
) -> anyhow::Result<Option<Refusal>> {
    match invoke(client, name).await {
        Ok(Outcome::Result(r)) if r.iter().filter(|b| **b != b' ').eq(PAYLOAD) => Ok(None),
        Ok(Outcome::Error(e))
            if e.kind == ErrorKind::OutOfMemory as i32 || e.kind == ErrorKind::Killed as i32 =>
        {
            Ok(Some(Refusal::Killed(format!(
                "{name}: {:?}: {}",
                e.kind(),
                e.message
            ))))
        }
        Ok(other) => bail!("{name} answered {other:?}"),
        Err(e) => match e.downcast_ref::<tonic::Status>() {
            Some(s)
                if s.code() == tonic::Code::ResourceExhausted
                    && s.message().contains("memory pool") =>
            {
                Ok(Some(Refusal::PoolFull(s.message().to_string())))
            }
            _ => Err(e),
        },
    }
}

/// Per-call latency of `calls` echo calls by each of `clients` concurrent
/// clients (own connections), after `warmup` uncounted calls each.
pub async fn warm_latency(
    cluster: &Cluster,
    name: &str,
    clients: usize,
    calls: usize,
    warmup: usize,
) -> anyhow::Result<Vec<Duration>> {
    let barrier = Arc::new(Barrier::new(clients));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut client = gateway(cluster).await?;
        let name = name.to_string();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..warmup {
                echo(&mut client, &name).await?;
            }
            barrier.wait().await;
            let mut samples = Vec::with_capacity(calls);
            for _ in 0..calls {
                let started = Instant::now();
                echo(&mut client, &name).await?;
                samples.push(started.elapsed());
            }
            anyhow::Ok(samples)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// Calls per second that `clients` closed-loop clients sustain for `time`.
pub async fn throughput(
    cluster: &Cluster,
    name: &str,
    clients: usize,
    time: Duration,
) -> anyhow::Result<f64> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut client = gateway(cluster).await?;
        let name = name.to_string();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            echo(&mut client, &name).await?;
            barrier.wait().await;
            let started = Instant::now();
            let mut calls = 0u64;
            while started.elapsed() < time {
                echo(&mut client, &name).await?;
                calls += 1;
            }
            anyhow::Ok(calls)
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut calls = 0;
    for task in tasks {
        calls += task.await??;
    }
    Ok(calls as f64 / started.elapsed().as_secs_f64())
}

/// Time to the first answer of `n` functions of `files` never called
/// before, one after the other, `gap` apart (untimed; zero: back to back)
/// (code already prepared on the node): see [`never_called`].
pub async fn cold_starts(
    cluster: &Cluster,
    prefix: &str,
    files: &[(&str, &str)],
    n: usize,
    gap: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let names = never_called(cluster, prefix, files, n, gap).await?;
    first_calls(cluster, &names, gap).await
}

/// Pushes `n + 1` functions of `files` (see [`push_all`]) and calls one of
/// them, after `gap`, so that a lazily made zygote is not charged to the
/// first cold start measured; answers the `n` never called.
pub async fn never_called(
    cluster: &Cluster,
    prefix: &str,
    files: &[(&str, &str)],
    n: usize,
    gap: Duration,
) -> anyhow::Result<Vec<String>> {
    let mut names = push_all(cluster, prefix, files, n + 1).await?;
    let extra = names.pop().context("n + 1 functions")?;
    first_calls(cluster, &[extra], gap).await?;
    Ok(names)
}

/// Pushes `n` functions `<prefix>-<i>` of `files`, each prepared (see
/// [`push`]); answers their names.
pub async fn push_all(
    cluster: &Cluster,
    prefix: &str,
    files: &[(&str, &str)],
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        push(cluster, &name, files).await?;
        names.push(name);
    }
    Ok(names)
}

/// Time to the answer of one echo call of each of `names`, one after the
/// other, each after a pause of `gap`: their cold starts, when none was
/// called before.
pub async fn first_calls(
    cluster: &Cluster,
    names: &[String],
    gap: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let mut client = gateway(cluster).await?;
    let mut samples = Vec::with_capacity(names.len());
    for name in names {
        tokio::time::sleep(gap).await;
        let started = Instant::now();
        echo(&mut client, name).await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// Sandboxes created and destroyed per second: `clients` clients call a
/// function that ends its runtime, so each call is a cold start and a
/// teardown. Returns (rate, sandboxd's count of cold starts in the run).
pub async fn churn(
    cluster: &Cluster,
    clients: usize,
    time: Duration,
) -> anyhow::Result<(f64, u64)> {
    push(cluster, "churn", &[("f.py", EXIT)]).await?;
    let before = status(cluster).await?.cold_starts_total;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut client = gateway(cluster).await?;
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u64;
            while started.elapsed() < time {
                match invoke(&mut client, "churn").await? {
                    Outcome::Error(e) if e.kind == ErrorKind::Killed as i32 => calls += 1,
                    other => bail!("churn answered {other:?}, not KILLED"),
                }
            }
            anyhow::Ok(calls)
        }));
    }
    let mut calls = 0;
    for task in tasks {
        calls += task.await??;
    }
    let rate = calls as f64 / started.elapsed().as_secs_f64();
    let cold = status(cluster).await?.cold_starts_total - before;
    Ok((rate, cold))
}

/// A cluster of the binaries in `bin` with `env` besides quiet logs and
/// no telemetry export.
pub fn start(bin: &Path, env: &[(&str, &str)]) -> Cluster {
    eprintln!("sock-bench: starting a cluster ({env:?})");
    let mut all = vec![("RUST_LOG", "warn"), ("OTEL_SDK_DISABLED", "true")];
    all.extend_from_slice(env);
    Cluster::start_from(bin, "bench", &all)
}

/// [`start`] off the runtime (starting waits for every service), shared
/// by the tasks that call it.
pub async fn start_shared(bin: &Path, env: &[(&str, String)]) -> anyhow::Result<Arc<Cluster>> {
    let bin = bin.to_path_buf();
    let env: Vec<_> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let cluster = tokio::task::spawn_blocking(move || {
        let env: Vec<_> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        start(&bin, &env)
    })
    .await?;
    Ok(Arc::new(cluster))
}

/// Stops `cluster` as Ctrl-C would; a `sock up` that does not exit cleanly
/// is worth a warning, not a failed run.
pub async fn stop(cluster: Cluster) -> anyhow::Result<()> {
    let status = tokio::task::spawn_blocking(move || cluster.stop()).await?;
    if !status.success() {
        eprintln!("sock-bench: warning: `sock up` exited with {status}");
    }
    Ok(())
}
