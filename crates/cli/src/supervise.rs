//! The processes of `sock up`: starting a service, copying its output,
//! waiting until it answers health, keeping it running, stopping them all.
//! When to restart is [`crate::restart`]'s to say; this module only acts.
//!
//! Each service has a supervisor task that owns its process. On an exit
//! it logs one line (the service, how it ended, the delay), sleeps the
//! delay, starts the binary again with the same arguments and environment
//! (so the same addresses, tokens, data dir and user), and counts the new
//! run as up only once it answers `grpc.health.v1` with SERVING; then its
//! pid replaces the old one in `endpoints.json`. On shutdown every
//! supervisor hands its process back, whatever it was doing (running,
//! waiting out a delay, starting), and [`stop_all`] stops them in order.
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow};
use sock_cli::endpoints::Endpoints;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::restart::{FAST_WITHIN, Restarts, Verdict};

/// How long a service may take to answer health after it starts.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(15);

/// One service, with the environment that wires it up.
pub struct Service {
    pub name: &'static str,
    pub health_addr: String,
    pub env: Vec<(String, String)>,
    /// Runs as the unprivileged user (all but sandboxd).
    pub unprivileged: bool,
}

/// The uid and gid the unprivileged services run as.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// How every service is started, the first time and after each exit.
pub struct Launch {
    pub bin_dir: PathBuf,
    pub config: Option<PathBuf>,
    pub run_as: Option<RunAs>,
}

impl Launch {
    fn spawn(&self, service: &Service) -> anyhow::Result<Child> {
        let binary = self.bin_dir.join(format!("sock-{}", service.name));
        let mut command = Command::new(&binary);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        command
            .envs(service.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Ctrl-C in a terminal reaches `sock up` alone, which stops
            // the services in order; in its group it would reach all four
            // at once, and look like four crashes.
            .process_group(0)
            .kill_on_drop(true);
        if service.unprivileged
            && let Some(RunAs { uid, gid }) = self.run_as
        {
            // std drops supplementary groups when it sets the uid as root.
            command.uid(uid).gid(gid);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        prefix_output(service.name, &mut child);
        Ok(child)
    }
}

/// Starts `services` in order, then waits until each answers health;
/// what started is in `children` (in the same order), even on an error.
/// Any exit here is an error: a service that cannot start the first time
/// is misconfigured, and restarting it would only repeat the message (as
/// Docker restarts only a container that once started).
pub async fn start_all(
    services: &[Service],
    launch: &Launch,
    children: &mut Vec<Child>,
) -> anyhow::Result<()> {
    for service in services {
        children.push(launch.spawn(service)?);
    }
    let deadline = Instant::now() + START_TIMEOUT;
    for (service, child) in services.iter().zip(children.iter_mut()) {
        until_serving(service, child, deadline)
            .await
            .map_err(|how| {
                anyhow!(
                    "sock-{} {how} during start-up; its log is above",
                    service.name
                )
            })?;
    }
    Ok(())
}

/// The endpoints `sock up` records, kept current as services come and go.
pub struct Record {
    data_dir: PathBuf,
    endpoints: Mutex<Endpoints>,
}

impl Record {
    /// Writes `endpoints` to `data_dir` and keeps them for later changes.
    pub fn new(data_dir: &Path, endpoints: Endpoints) -> anyhow::Result<Record> {
        endpoints
            .write(data_dir)
            .with_context(|| format!("cannot write the endpoints in {}", data_dir.display()))?;
        Ok(Record {
            data_dir: data_dir.to_path_buf(),
            endpoints: Mutex::new(endpoints),
        })
    }

    /// Records `service`'s pid, or that it has none (it is down).
    fn set_pid(&self, service: &str, pid: Option<u32>) {
        let mut endpoints = self.endpoints.lock().expect("no panic while held");
        match pid {
            Some(pid) => endpoints.pids.insert(service.to_string(), pid),
            None => endpoints.pids.remove(service),
        };
        if let Err(e) = endpoints.write(&self.data_dir) {
            eprintln!(
                "cannot update the endpoints in {}: {e}",
                self.data_dir.display()
            );
        }
    }

    /// Removes the file: the suite is going down.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(self.data_dir.join(sock_cli::endpoints::FILE_NAME));
    }
}

/// What a supervisor does when its service exits.
#[derive(Clone, Copy, PartialEq)]
pub enum OnExit {
    /// Start it again, per [`crate::restart`].
    Restart,
    /// Report it and leave it down (rehearsing an outage).
    LeaveDown,
}

/// Keeps `services` running from `children` (serving already, in the
/// same order) until Ctrl-C or SIGTERM (`shutdown`), or until one fails
/// fast too often (the error says which); then stops them all.
pub async fn keep_up(
    services: Vec<Service>,
    children: Vec<Child>,
    launch: Arc<Launch>,
    on_exit: OnExit,
    record: Arc<Record>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let names: Vec<&'static str> = services.iter().map(|s| s.name).collect();
    let (give_up, mut gave_up) = tokio::sync::mpsc::unbounded_channel();
    let supervisors: Vec<_> = services
        .into_iter()
        .zip(children)
        .map(|(service, child)| {
            tokio::spawn(supervise(
                service,
                child,
                launch.clone(),
                on_exit,
                record.clone(),
                shutdown.clone(),
                give_up.clone(),
            ))
        })
        .collect();
    let failure = tokio::select! {
        () = shutdown.cancelled() => None,
        Some(why) = gave_up.recv() => {
            shutdown.cancel();
            Some(why)
        }
    };
    let mut children = Vec::with_capacity(supervisors.len());
    for supervisor in supervisors {
        // A supervisor that panicked dropped its process, which killed it.
        children.push(supervisor.await.ok().flatten());
    }
    // Once no supervisor can write it again.
    record.remove();
    stop_all(&names, children).await;
    failure.map_or(Ok(()), Err)
}

/// Keeps `service` running from `child` (serving already) until
/// `shutdown`; answers the process to stop, if one runs. When the service
/// fails fast too often, `give_up` gets why (and the suite stops).
async fn supervise(
    service: Service,
    child: Child,
    launch: Arc<Launch>,
    on_exit: OnExit,
    record: Arc<Record>,
    shutdown: CancellationToken,
    give_up: UnboundedSender<anyhow::Error>,
) -> Option<Child> {
    let name = service.name;
    let mut restarts = Restarts::default();
    // The process of the current run, and since when it serves.
    let mut run = Ok((child, Some(Instant::now())));
    loop {
        let (how, served) = match run {
            Ok((mut child, since)) => {
                match watch(&service, &mut child, since, &record, &shutdown).await {
                    Some(ended) => ended,
                    None => return Some(child),
                }
            }
            Err(e) => (format!("{e:#}"), None),
        };
        record.set_pid(name, None);
        if on_exit == OnExit::LeaveDown {
            eprintln!("sock-{name} {how}; left down (--no-restart), the others keep running");
            shutdown.cancelled().await;
            return None;
        }
        let delay = match restarts.exited(served) {
            Verdict::RestartAfter(delay) => delay,
            Verdict::GiveUp { fast_exits } => {
                let _ = give_up.send(anyhow!(
                    "sock-{name} ended {fast_exits} times in a row, each before it had served \
                     {FAST_WITHIN:?} (last: {how}), so everything was stopped; its log is above"
                ));
                return None;
            }
        };
        eprintln!("sock-{name} {how}; restarting it in {delay:?}");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return None,
        }
        run = launch.spawn(&service).map(|child| (child, None));
    }
}

/// Waits for `child`'s run to end: answers how it ended and how long it
/// served, or `None` on shutdown. `since`: when it answered health, if
/// it did yet; until it does, it is not up (nor its pid recorded).
async fn watch(
    service: &Service,
    child: &mut Child,
    mut since: Option<Instant>,
    record: &Record,
    shutdown: &CancellationToken,
) -> Option<(String, Option<Duration>)> {
    if since.is_none() {
        let deadline = Instant::now() + START_TIMEOUT;
        let healthy = tokio::select! {
            healthy = until_serving(service, child, deadline) => healthy,
            () = shutdown.cancelled() => return None,
        };
        if let Err(how) = healthy {
            // Killed (and reaped) so that the next run may bind its
            // addresses; a process that exited needs neither.
            let _ = child.kill().await;
            return Some((how, None));
        }
        since = Some(Instant::now());
        record.set_pid(service.name, child.id());
        eprintln!(
            "sock-{} serves again (pid {})",
            service.name,
            child.id().map_or_else(|| "?".into(), |pid| pid.to_string())
        );
    }
    tokio::select! {
        status = child.wait() => Some((ended(status), since.map(|at| at.elapsed()))),
        () = shutdown.cancelled() => None,
    }
}

/// How a process ended, for a log line: `exited (signal: 9 (SIGKILL))`.
fn ended(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => format!("exited ({status})"),
        Err(e) => format!("cannot be waited on ({e})"),
    }
}

/// Waits until `service` answers health; else says how its run ended
/// (it exited, or `deadline` passed).
async fn until_serving(
    service: &Service,
    child: &mut Child,
    deadline: Instant,
) -> Result<(), String> {
    let polling = async {
        while !serving(&service.health_addr).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // The deadline bounds each check too: a process that takes
    // connections and never answers must not hold the start for ever.
    tokio::select! {
        answered = tokio::time::timeout_at(deadline, polling) => answered.map_err(|_| {
            format!(
                "did not answer health at {} within {START_TIMEOUT:?}",
                service.health_addr
            )
        }),
        status = child.wait() => Err(ended(status)),
    }
}

async fn serving(addr: &str) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(addr.to_string()) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
    else {
        return false;
    };
    matches!(
        HealthClient::new(channel)
            .check(HealthCheckRequest { service: String::new() })
            .await,
        Ok(response) if response.get_ref().status() == ServingStatus::Serving
    )
}

/// Copies a child's stdout and stderr to ours, each line tagged with the
/// service, so the four logs stay readable in one terminal.
fn prefix_output(name: &'static str, child: &mut Child) {
    if let Some(out) = child.stdout.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("[{name}] {line}");
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{name}] {line}");
            }
        });
    }
}

/// SIGTERM in reverse start order, so the gateway stops taking calls
/// before the services it needs go away; SIGKILL what is left after the
/// grace period. `children` are in start order, `None` for a service
/// that is down.
pub async fn stop_all(names: &[&'static str], children: Vec<Option<Child>>) {
    for (name, child) in names.iter().zip(children).rev() {
        let Some(mut child) = child else { continue };
        if let Some(pid) = child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pids fit i32"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(STOP_GRACE, child.wait())
            .await
            .is_err()
        {
            eprintln!("sock-{name} did not stop within {STOP_GRACE:?}; killing it");
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use sock_cli::endpoints::FILE_NAME;

    use super::*;

    /// A service `sock-flaky` in a bin dir of its own that exits at once,
    /// noting each run in `runs`; its health address takes no connection.
    struct Flaky {
        bin: tempfile::TempDir,
        data: tempfile::TempDir,
    }

    impl Flaky {
        fn new() -> Flaky {
            let bin = tempfile::tempdir().expect("tempdir");
            let data = tempfile::tempdir().expect("tempdir");
            let script = bin.path().join("sock-flaky");
            let runs = data.path().join("runs");
            std::fs::write(
                &script,
                format!("#!/bin/sh\necho run >> {}\nexit 3\n", runs.display()),
            )
            .expect("write");
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            Flaky { bin, data }
        }

        fn service() -> Service {
            let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = closed.local_addr().expect("addr");
            Service {
                name: "flaky",
                health_addr: format!("http://{addr}"),
                env: Vec::new(),
                unprivileged: false,
            }
        }

        /// Starts it as `sock up` would have, then keeps it up.
        async fn keep_up(
            &self,
            on_exit: OnExit,
            shutdown: CancellationToken,
        ) -> anyhow::Result<()> {
            let launch = Arc::new(Launch {
                bin_dir: self.bin.path().to_path_buf(),
                config: None,
                run_as: None,
            });
            let service = Flaky::service();
            let child = launch.spawn(&service).expect("spawn");
            let mut endpoints = Endpoints::default();
            endpoints
                .pids
                .insert("flaky".into(), child.id().expect("running"));
            let record = Arc::new(Record::new(self.data.path(), endpoints).expect("record"));
            keep_up(
                vec![service],
                vec![child],
                launch,
                on_exit,
                record,
                shutdown,
            )
            .await
        }

        fn runs(&self) -> usize {
            std::fs::read_to_string(self.data.path().join("runs"))
                .unwrap_or_default()
                .lines()
                .count()
        }

        fn recorded_pid(&self) -> Option<u32> {
            let bytes = std::fs::read(self.data.path().join(FILE_NAME)).ok()?;
            let endpoints: Endpoints = serde_json::from_slice(&bytes).expect("valid");
            endpoints.pids.get("flaky").copied()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_that_never_serves_is_tried_five_times_then_stops_the_suite() {
        let flaky = Flaky::new();
        let err = flaky
            .keep_up(OnExit::Restart, CancellationToken::new())
            .await
            .expect_err("gave up");
        assert!(
            err.to_string()
                .starts_with("sock-flaky ended 5 times in a row"),
            "{err}"
        );
        assert_eq!(flaky.runs(), 5);
        assert!(
            !flaky.data.path().join(FILE_NAME).exists(),
            "endpoints.json outlived the suite"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn left_down_a_service_is_not_restarted_and_shutdown_still_ends_it_all() {
        let flaky = Flaky::new();
        let shutdown = CancellationToken::new();
        let stop_later = async {
            while flaky.runs() == 0 || flaky.recorded_pid().is_some() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Longer than any restart delay: no second run comes.
            tokio::time::sleep(2 * crate::restart::MAX_DELAY).await;
            shutdown.cancel();
        };
        let (kept, ()) = tokio::join!(
            flaky.keep_up(OnExit::LeaveDown, shutdown.clone()),
            stop_later
        );
        kept.expect("a clean stop");
        assert_eq!(flaky.runs(), 1);
        assert!(!flaky.data.path().join(FILE_NAME).exists());
    }
}
