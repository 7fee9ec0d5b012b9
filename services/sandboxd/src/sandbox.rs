//! Sandboxes: create one for a function, call it, destroy it.
//!
//! [`Sandboxes`] owns what all sandboxes of one sandboxd share (the data
//! dir, the runtime file, the cgroup instance); [`Sandbox`] is one live
//! sandbox. Destroying is the one path every sandbox takes, whether the
//! call succeeded, failed, timed out, or the future was dropped: it kills
//! everything in the sandbox's cgroup and removes it.
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sock_proto::v1::{ErrorKind, FunctionError, HttpHeader, HttpRequest, HttpResponse};
use sock_sandbox::cgroups::{self, CgroupLimits, CgroupPool, SandboxCgroup};
use sock_sandbox::init::{INIT_ARG, InitSpec, SETUP_FAILED, ZYGOTE_FILE};
use sock_sandbox::mounts;
use sock_sandbox::namespaces::{self, NetnsPool};
use sock_sandbox::protocol::{self, Header, MAX_BODY_BYTES, ProtocolError, RuntimeErrorKind};
use sock_sandbox::seccomp::{self, Programs};
use sock_service::ImportCache;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use crate::config::Config;
use crate::error::Error;
use crate::logs::{self, Calls, Origin};
use crate::uids::{SandboxUid, UidPool};

/// The runtime and the zygote, embedded so sandboxd and its runtime always
/// match.
const RUNTIME_PY: &str = include_str!("../../../runtime/sock_runtime.py");
const ZYGOTE_PY: &str = include_str!("../../../runtime/sock_zygote.py");
/// How long a runtime that closed its socket gets to exit before it is
/// killed anyway.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Resource limits of one sandbox as its function asked them; 0 takes
/// sandboxd's configured default, and nothing passes its ceilings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_mb: u64,
    pub pids: u32,
    /// Share of one CPU in percent (100 = one CPU).
    pub cpu_percent: u32,
}

/// What to run in a new sandbox.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SandboxSpec {
    /// Function name, for logs.
    pub function: String,
    /// Host directory with the function's code, mounted read-only at /code.
    pub code_dir: PathBuf,
    /// Host directories of installed packages, in sys.path order.
    pub package_dirs: Vec<PathBuf>,
    /// Entry file inside the code dir; empty means "f.py".
    pub entry_file: String,
    /// Extra environment of the function.
    pub environment: Vec<(String, String)>,
    pub limits: Limits,
}

/// How a call ended, as far as the function is concerned: the JSON
/// `f(event)` returned, how the function failed (raised, timed out, ran
/// out of memory, died), or an HTTP call's answer. The answer's own type,
/// so it goes out as it was made.
pub use sock_proto::v1::sandbox_invoke_response::Outcome;

/// The sandboxes of one sandboxd instance. Clones share them.
#[derive(Clone)]
pub struct Sandboxes {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub config: Config,
    pub mount_point: PathBuf,
    pub runtime_dir: PathBuf,
    /// `config.cache_data_dir`, absolute: code and package dirs below it
    /// are opened beneath it, and the cache may name no other.
    pub cache_data_dir: PathBuf,
    init_program: PathBuf,
    cgroup_version: u32,
    live: Mutex<HashMap<String, Arc<SandboxCgroup>>>,
    cgroups: CgroupPool,
    refilling_cgroups: AtomicBool,
    netns: Arc<NetnsPool>,
    pub seccomp: Programs,
    pub uids: Arc<UidPool>,
}

impl Drop for Shared {
    /// For library users that never called [`Sandboxes::close`].
    fn drop(&mut self) {
        self.cgroups.close();
    }
}

impl Shared {
    /// A cgroup from the pool with `limits`, counted as live under `id`.
    pub fn take_cgroup(
        self: &Arc<Self>,
        id: &str,
        limits: CgroupLimits,
    ) -> Result<Arc<SandboxCgroup>, Error> {
        let cgroup = Arc::new(self.cgroups.take(limits)?);
        self.refill_cgroups();
        self.live().insert(id.to_string(), cgroup.clone());
        Ok(cgroup)
    }

    /// A cgroup from the pool with `limits`, not yet any sandbox's.
    pub fn take_spare_cgroup(
        self: &Arc<Self>,
        limits: CgroupLimits,
    ) -> Result<SandboxCgroup, Error> {
        let cgroup = self.cgroups.take(limits)?;
        self.refill_cgroups();
        Ok(cgroup)
    }

    /// Counts `cgroup` as the live sandbox `id`'s.
    pub fn adopt(&self, id: &str, cgroup: SandboxCgroup) -> Arc<SandboxCgroup> {
        let cgroup = Arc::new(cgroup);
        self.live().insert(id.to_string(), cgroup.clone());
        cgroup
    }

    /// Kills what is in a cgroup no sandbox owns and gives it back (blocks).
    pub fn recycle(&self, cgroup: &SandboxCgroup) {
        self.cgroups.recycle(cgroup);
    }

    /// Gives back the cgroup of a sandbox that never started (blocks while
    /// whatever joined it is killed).
    pub async fn abandon(self: &Arc<Self>, id: &str, cgroup: Arc<SandboxCgroup>) {
        let shared = self.clone();
        let id = id.to_string();
        let _ = tokio::task::spawn_blocking(move || {
            shared.live().remove(&id);
            shared.cgroups.recycle(&cgroup);
        })
        .await;
    }

    /// Tops the cgroup pool up in the background once it runs low.
    fn refill_cgroups(self: &Arc<Self>) {
        if self.cgroups.spare() * 2 < self.config.cgroup_pool_size
            && !self.refilling_cgroups.swap(true, Ordering::AcqRel)
        {
            let shared = self.clone();
            tokio::task::spawn_blocking(move || {
                shared.cgroups.refill();
                shared.refilling_cgroups.store(false, Ordering::Release);
            });
        }
    }

    /// What a sandbox asking `limits` gets: the configured default for a
    /// 0, then capped at the operator's ceilings (a spec may come from a
    /// registry with other ceilings, or from before they were lowered).
    fn granted(&self, limits: &Limits) -> sock_proto::v1::Limits {
        self.config.ceilings.cap(sock_proto::v1::Limits {
            memory_mb: or_default(limits.memory_mb, self.config.memory_mb),
            pids: or_default(limits.pids, self.config.pids),
            cpu_percent: or_default(limits.cpu_percent, self.config.cpu_percent),
            timeout_ms: 0,
        })
    }

    pub fn memory_mb(&self, limits: &Limits) -> u64 {
        self.granted(limits).memory_mb
    }

    /// The cgroup limits of a sandbox with `limits`.
    pub fn cgroup_limits(&self, limits: &Limits) -> CgroupLimits {
        let granted = self.granted(limits);
        CgroupLimits {
            memory_bytes: granted.memory_mb << 20,
            pids: granted.pids,
            cpu_percent: granted.cpu_percent,
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SandboxCgroup>>> {
        // A panic while holding the lock leaves the map consistent (single
        // inserts and removes), so poisoning is safe to ignore.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Sandboxes {
    /// Prepares the data dir and the runtime, and removes what an earlier
    /// run of the same instance left behind. Needs root.
    pub fn new(config: Config) -> Result<Sandboxes, Error> {
        let uid = nix::unistd::geteuid();
        if !uid.is_root() {
            return Err(Error::NotRoot { uid: uid.as_raw() });
        }
        check_config(&config)?;
        logs::configure(&config);
        let init_program = match &config.init_program {
            Some(path) => {
                std::fs::metadata(path).map_err(io("init program", path))?;
                path.clone()
            }
            None => PathBuf::from("/proc/self/exe"),
        };

        let data_dir = &config.data_dir;
        // Created private, but an existing directory keeps its mode: the
        // data dir may be a shared parent the operator chose.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(io("cannot create directory", data_dir))?;
        let data_dir = data_dir.canonicalize().map_err(io("data dir", data_dir))?;
        let mount_point = data_dir.join("root");
        make_dir(&mount_point, 0o755)?;
        let runtime_dir = data_dir.join("runtime");
        make_dir(&runtime_dir, 0o755)?;
        write_runtime(&runtime_dir, "sock_runtime.py", RUNTIME_PY)?;
        write_runtime(&runtime_dir, ZYGOTE_FILE, ZYGOTE_PY)?;
        if config.import_cache != ImportCache::Off {
            let library = crate::zygote::library(&init_program)?;
            write_runtime(&runtime_dir, sock_sandbox::LIBRARY_FILE, library)?;
        }

        // A crashed run's sandboxes died with it (their inits have a
        // parent-death signal), but their cgroups and any mount it had
        // made on the host stay until removed here.
        let removed = cgroups::remove_leftovers(&config.instance);
        if removed > 0 {
            tracing::warn!(removed, instance = %config.instance, "removed leftover cgroups");
        }
        let unmounted = mounts::unmount_below(&data_dir);
        if unmounted > 0 {
            tracing::warn!(unmounted, "removed leftover mounts under the data dir");
        }
        crate::build::remove_leftovers(&data_dir);
        if config.cgroup_favor_dynmods
            && let Err(e) = cgroups::favor_dynmods()
        {
            tracing::warn!(error = %e, "cgroup moves stay slow");
        }
        let seccomp = seccomp::compile()?;
        let cgroups = CgroupPool::new(&config.instance, config.cgroup_pool_size);
        let netns = NetnsPool::new(config.netns_pool_size);
        let uids = UidPool::new(config.function_uid_base, config.function_uids);
        let cache_data_dir = std::path::absolute(&config.cache_data_dir).map_err(|e| {
            Error::InvalidConfig(format!(
                "cache_data_dir {}: {e}",
                config.cache_data_dir.display()
            ))
        })?;
        Ok(Sandboxes {
            shared: Arc::new(Shared {
                config,
                mount_point,
                runtime_dir,
                cache_data_dir,
                init_program,
                cgroup_version: cgroups::version(),
                live: Mutex::new(HashMap::new()),
                cgroups,
                refilling_cgroups: AtomicBool::new(false),
                netns,
                seccomp,
                uids,
            }),
        })
    }

    /// At shutdown, once the sandboxes are destroyed: removes the ready
    /// cgroups and the instance's cgroup dirs; a sandbox that ends later
    /// removes its own cgroup instead of keeping it (blocks briefly).
    pub fn close(&self) {
        self.shared.cgroups.close();
    }

    /// Sandboxes alive right now.
    pub fn alive(&self) -> usize {
        self.shared.live().len()
    }

    /// The memory limit in MB a sandbox with `limits` gets.
    pub fn memory_mb(&self, limits: &Limits) -> u64 {
        self.shared.memory_mb(limits)
    }

    pub(crate) fn spare_cgroups(&self) -> u32 {
        u32::try_from(self.shared.cgroups.spare()).unwrap_or(u32::MAX)
    }

    pub(crate) fn spare_netns(&self) -> u32 {
        u32::try_from(self.shared.netns.spare()).unwrap_or(u32::MAX)
    }

    /// The cgroup version in use: 1 or 2.
    pub fn cgroup_version(&self) -> u32 {
        self.shared.cgroup_version
    }

    /// Kills every live sandbox (at shutdown, once in-flight calls had
    /// their chance). Their calls then end with a KILLED outcome.
    pub async fn destroy_all(&self) {
        let cgroups: Vec<Arc<SandboxCgroup>> = self.shared.live().values().cloned().collect();
        if cgroups.is_empty() {
            return;
        }
        tracing::info!(sandboxes = cgroups.len(), "destroying live sandboxes");
        let _ = tokio::task::spawn_blocking(move || cgroups.iter().for_each(|c| c.kill())).await;
    }

    /// Starts a sandbox. The runtime imports the function's entry file in
    /// the background; [`Sandbox::invoke`] waits for it.
    pub async fn create(&self, spec: SandboxSpec) -> Result<Sandbox, Error> {
        let shared = &self.shared;
        check_spec(&spec, Some(&shared.cache_data_dir))?;
        let memory_mb = shared.memory_mb(&spec.limits);
        let limits = shared.cgroup_limits(&spec.limits);
        let function: Arc<str> = spec.function.as_str().into();
        let uid = shared.uids.take()?;
        let init_spec = InitSpec {
            code_dir: Some(spec.code_dir),
            package_dirs: spec.package_dirs,
            entry_file: if spec.entry_file.is_empty() {
                "f.py".into()
            } else {
                spec.entry_file
            },
            environment: spec.environment,
            uid: uid.get(),
            gid: uid.get(),
            ..self.init_spec()
        };
        self.start(function, memory_mb, limits, init_spec, true, Some(uid))
            .await
    }

    /// What every init gets; callers fill in what it runs.
    pub(crate) fn init_spec(&self) -> InitSpec {
        let shared = &self.shared;
        InitSpec {
            mount_point: shared.mount_point.clone(),
            code_dir: None,
            runtime_dir: shared.runtime_dir.clone(),
            package_dirs: Vec::new(),
            tmp_mb: shared.config.tmp_mb,
            uid: shared.config.sandbox_uid,
            gid: shared.config.sandbox_gid,
            python: shared.config.python.clone(),
            entry_file: String::new(),
            environment: Vec::new(),
            seccomp: shared.seccomp.clone(),
            zygote: None,
            command: None,
            extra_dirs: Vec::new(),
            cache_data_dir: Some(shared.cache_data_dir.clone()),
        }
    }

    /// Starts an init running `init_spec` in a new cgroup with `limits`
    /// (`network`: a network namespace from the pool, else the host's).
    pub(crate) async fn start(
        &self,
        function: Arc<str>,
        memory_mb: u64,
        limits: CgroupLimits,
        init_spec: InitSpec,
        network: bool,
        uid: Option<SandboxUid>,
    ) -> Result<Sandbox, Error> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let cgroup = self.shared.take_cgroup(&id, limits)?;
        match self
            .spawn(&id, &function, init_spec, &cgroup, network)
            .await
        {
            Ok((child, conn)) => Ok(Sandbox::new(
                id,
                function,
                memory_mb,
                self.shared.clone(),
                Live {
                    cgroup,
                    child: Some(child),
                    conn,
                    ready: false,
                    parent: None,
                    uid,
                },
            )),
            Err(e) => {
                self.shared.abandon(&id, cgroup).await;
                Err(e)
            }
        }
    }

    /// Spawns the init in the cgroup and hands it its spec. A returned
    /// error leaves no process: the child is killed when dropped.
    async fn spawn(
        &self,
        id: &str,
        function: &Arc<str>,
        init_spec: InitSpec,
        cgroup: &SandboxCgroup,
        network: bool,
    ) -> Result<(Child, UnixStream), Error> {
        let shared = &self.shared;
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|source| Error::Spawn {
                program: "socketpair".into(),
                source,
            })?;
        let theirs = OwnedFd::from(theirs);
        let mut cmd = Command::new(&shared.init_program);
        cmd.arg(INIT_ARG)
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let netns = match network {
            true => Some(shared.netns.take().map_err(|source| Error::Spawn {
                program: "network namespace".into(),
                source,
            })?),
            false => None,
        };
        namespaces::prepare_init(&mut cmd, &theirs, netns.as_ref());
        let spawn_err = |source| Error::Spawn {
            program: shared.init_program.display().to_string(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        // The init is in the namespace now and keeps it alive.
        drop(netns);
        drop(theirs);
        let pid = child.id().ok_or_else(|| {
            spawn_err(std::io::Error::other(
                "the init exited before it was started",
            ))
        })?;
        // Before the spec goes out: everything the init forks is charged
        // to the sandbox from the start.
        cgroup.add(pid)?;

        let pipe = |pipe: Option<std::io::Result<OwnedFd>>| {
            pipe.transpose().map_err(|source| Error::Spawn {
                program: "output pipe".into(),
                source,
            })
        };
        let stdout = pipe(child.stdout.take().map(|out| out.into_owned_fd()))?;
        let stderr = pipe(child.stderr.take().map(|err| err.into_owned_fd()))?;
        forward_logs(function, id, stdout, stderr);
        let json = serde_json::to_vec(&init_spec).expect("the init spec is plain data");
        let spec_err = |source| Error::Spec {
            id: id.to_string(),
            source,
        };
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| spec_err(std::io::Error::other("no stdin pipe")))?;
        stdin.write_all(&json).await.map_err(spec_err)?;
        drop(stdin);

        ours.set_nonblocking(true).map_err(spec_err)?;
        let conn = UnixStream::from_std(ours).map_err(spec_err)?;
        Ok((child, conn))
    }
}

/// Logs what the sandbox `id` prints, line by line, each line tagged
/// with the call it was serving (the [`Sandbox`] made with `id` says).
pub(crate) fn forward_logs(
    function: &Arc<str>,
    id: &str,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
) {
    let origin = Origin {
        function: function.clone(),
        sandbox: id.into(),
    };
    logs::forward(origin, stdout, stderr);
}

/// One sandbox. Dropping it destroys it (synchronously, in milliseconds);
/// prefer [`Sandbox::destroy`] in async code.
pub struct Sandbox {
    id: String,
    function: Arc<str>,
    memory_mb: u64,
    dirs: Vec<PathBuf>,
    shared: Arc<Shared>,
    live: Option<Live>,
    /// Tells the log forwarder which call the sandbox serves.
    calls: Option<Calls>,
    /// Whether the runtime was sent its limits (before the first call).
    limits_sent: bool,
}

pub(crate) struct Live {
    pub cgroup: Arc<SandboxCgroup>,
    /// The init; None for a zygote's child, whose parent is the zygote.
    pub child: Option<Child>,
    pub conn: UnixStream,
    pub ready: bool,
    /// Counts this sandbox among its zygote's live children.
    pub parent: Option<ChildOf>,
    /// The function sandbox's own uid; None for a zygote.
    pub uid: Option<SandboxUid>,
}

/// A zygote's live children, and whether it is retired: an evicted zygote
/// is retired only while it has no child, and a retired one forks none, so
/// eviction never kills a child that a fork was just making.
#[derive(Clone, Default)]
pub(crate) struct Children(Arc<std::sync::atomic::AtomicUsize>);

/// The count's top bit marks a retired zygote.
const RETIRED: usize = 1 << (usize::BITS - 1);

impl Children {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire) & !RETIRED
    }

    pub fn is_retired(&self) -> bool {
        self.0.load(Ordering::Acquire) & RETIRED != 0
    }

    /// Retires the zygote if it has no child; false if it has one.
    pub fn retire_if_none(&self) -> bool {
        self.0
            .compare_exchange(0, RETIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Counts one more child; None once the zygote is retired.
    pub fn enter(&self) -> Option<ChildOf> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n & RETIRED == 0).then_some(n + 1)
            })
            .ok()?;
        Some(ChildOf(self.0.clone()))
    }
}

/// One live child of a zygote, for as long as this lives.
pub(crate) struct ChildOf(Arc<std::sync::atomic::AtomicUsize>);

impl ChildOf {
    /// Counts another child. The zygote cannot be retired meanwhile: this
    /// one keeps the count above zero.
    pub fn sibling(&self) -> ChildOf {
        self.0.fetch_add(1, Ordering::AcqRel);
        ChildOf(self.0.clone())
    }
}

impl Drop for ChildOf {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Sandbox {
    pub(crate) fn new(
        id: String,
        function: Arc<str>,
        memory_mb: u64,
        shared: Arc<Shared>,
        live: Live,
    ) -> Sandbox {
        Sandbox {
            dirs: live.cgroup.dirs(),
            live: Some(live),
            calls: logs::take_calls(&id),
            limits_sent: false,
            id,
            function,
            memory_mb,
            shared,
        }
    }

    /// Reads the next frame, which must be `expected`, within `timeout`.
    /// Anything else (the sandbox died, said something else, took too
    /// long) is an error naming what happened.
    pub(crate) async fn expect(
        &mut self,
        expected: Header,
        timeout: Duration,
    ) -> Result<(), String> {
        let Some(live) = self.live.as_mut() else {
            return Err("destroyed".into());
        };
        match tokio::time::timeout(timeout, protocol::read_frame(&mut live.conn)).await {
            Ok(Ok((header, _))) if header == expected => {
                if header == Header::Ready {
                    live.ready = true;
                }
                Ok(())
            }
            // A zygote whose import failed says which and why before it exits.
            Ok(Ok((Header::Error { message, .. }, _))) => Err(message),
            Ok(Ok((other, _))) => Err(format!("sent {other:?} instead of {expected:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no {expected:?} within {timeout:?}")),
        }
    }

    /// For a sandbox running a command (the installer): reads what it
    /// writes until it exits, keeping the last `keep` bytes, and says
    /// whether it exited with status 0. None when it ran past `timeout`
    /// (it is then destroyed) or was destroyed already.
    pub(crate) async fn output(
        &mut self,
        timeout: Duration,
        keep: usize,
    ) -> Option<(bool, Vec<u8>)> {
        let live = self.live.as_mut()?;
        let run = async {
            let mut tail = Vec::new();
            let mut chunk = vec![0u8; 8192];
            loop {
                match tokio::io::AsyncReadExt::read(&mut live.conn, &mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        tail.extend_from_slice(&chunk[..n]);
                        if tail.len() > 2 * keep {
                            tail.drain(..tail.len() - keep);
                        }
                    }
                }
            }
            if tail.len() > keep {
                tail.drain(..tail.len() - keep);
            }
            let status = match live.child.as_mut() {
                Some(child) => child.wait().await.ok(),
                None => None,
            };
            (status.is_some_and(|s| s.success()), tail)
        };
        let done = tokio::time::timeout(timeout, run).await.ok();
        self.destroy().await;
        done
    }

    /// Whether the runtime has closed its socket: a ready runtime only
    /// ever speaks when spoken to, so anything to read between calls means
    /// it is gone (say, killed with the zygote it was forked from).
    pub(crate) fn peer_closed(&self) -> bool {
        self.live
            .as_ref()
            .is_none_or(|live| live.ready && closed(live.conn.as_raw_fd()))
    }

    /// The socket to the runtime while the sandbox lives.
    pub(crate) fn conn(&self) -> Option<&UnixStream> {
        self.live.as_ref().map(|live| &live.conn)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the sandbox still runs; false once destroyed.
    pub fn is_alive(&self) -> bool {
        self.live.is_some()
    }

    /// The sandbox's cgroup directories while it lives. Cgroups are
    /// pooled: after destroy they are empty and may serve another sandbox.
    pub fn cgroup_dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The memory limit in MB.
    pub fn memory_mb(&self) -> u64 {
        self.memory_mb
    }

    /// The sandbox's cgroup while it lives.
    pub(crate) fn cgroup(&self) -> Option<Arc<SandboxCgroup>> {
        self.live.as_ref().map(|live| live.cgroup.clone())
    }

    /// Freezes the sandbox; returns the memory limit now in force (bytes).
    pub(crate) fn pause(&self) -> Result<u64, Error> {
        match &self.live {
            Some(live) => Ok(live.cgroup.pause()?),
            None => Err(Error::Destroyed {
                id: self.id.clone(),
            }),
        }
    }

    pub(crate) fn unpause(&self) -> Result<(), Error> {
        match &self.live {
            Some(live) => Ok(live.cgroup.unpause()?),
            None => Err(Error::Destroyed {
                id: self.id.clone(),
            }),
        }
    }

    /// Calls the function with `payload` (JSON bytes; empty means None).
    /// `timeout` covers the import of the entry file too on the first
    /// call. A timeout, a dead runtime or a broken reply destroys the
    /// sandbox; the outcome says what happened.
    pub async fn invoke(
        &mut self,
        call_id: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Outcome, Error> {
        self.invoke_within(call_id, payload, None, timeout, timeout)
            .await
    }

    /// [`invoke`](Self::invoke) with `timeout` left of a call whose limit
    /// is `limit` (the rest went waiting for memory); a timeout names the
    /// limit. With `http`, the call goes as an HTTP request, `payload` its
    /// body; the runtime serves it to the app or to f(event).
    pub(crate) async fn invoke_within(
        &mut self,
        call_id: &str,
        payload: &[u8],
        http: Option<&HttpRequest>,
        timeout: Duration,
        limit: Duration,
    ) -> Result<Outcome, Error> {
        if payload.len() > MAX_BODY_BYTES as usize {
            return Err(Error::InvalidRequest(format!(
                "payload is {} bytes, over the limit of {} MiB",
                payload.len(),
                MAX_BODY_BYTES >> 20
            )));
        }
        let Some(live) = self.live.as_mut() else {
            return Err(Error::Destroyed {
                id: self.id.clone(),
            });
        };
        let request = match http {
            None => Header::Invoke {
                call_id: call_id.into(),
            },
            Some(http) => http_header(call_id, http),
        };
        let max_result_bytes = self.shared.config.max_result_bytes;
        let call = Call {
            id: call_id,
            limits: (!self.limits_sent).then_some(Header::Limits { max_result_bytes }),
            request,
            payload,
            max_result_bytes,
        };
        let exchanged =
            tokio::time::timeout(timeout, exchange(live, self.calls.as_ref(), call)).await;
        if matches!(exchanged, Ok(Ok(_))) {
            self.limits_sent = true;
        }
        match exchanged {
            Ok(Ok(outcome)) => Ok(outcome),
            // Only a function writing its own frames sends one over
            // `max_result_bytes`: the runtime refuses to.
            Ok(Err(ProtocolError::TooLarge {
                part: "body",
                len,
                limit,
            })) => {
                tracing::warn!(sandbox = %self.id, len, limit, "reply over max_result_bytes");
                // Its frame was not read: the stream cannot go on.
                self.destroy().await;
                Ok(Outcome::Error(function_error(
                    ErrorKind::Function,
                    format!(
                        "the function's reply is {len} bytes, over the limit of {limit} bytes; \
                         its sandbox was destroyed"
                    ),
                    String::new(),
                )))
            }
            Ok(Err(ProtocolError::Closed | ProtocolError::Io(_))) => self.died().await,
            Ok(Err(broken)) => {
                tracing::warn!(sandbox = %self.id, error = %broken, "runtime broke the protocol");
                self.destroy().await;
                Ok(Outcome::Error(function_error(
                    ErrorKind::Killed,
                    format!("sandbox sent an invalid reply ({broken}); it was destroyed"),
                    String::new(),
                )))
            }
            Err(_elapsed) => {
                self.destroy().await;
                Ok(Outcome::Error(function_error(
                    ErrorKind::Timeout,
                    format!("function exceeded its timeout of {} ms", limit.as_millis()),
                    String::new(),
                )))
            }
        }
    }

    /// The runtime closed its socket: find out why, then clean up.
    async fn died(&mut self) -> Result<Outcome, Error> {
        let live = self
            .live
            .as_mut()
            .expect("died() is only called on a live sandbox");
        let Some(child) = live.child.as_mut() else {
            // A zygote's child: no exit status to read, only the cgroup's
            // account of an OOM kill.
            let oom = live.cgroup.oom_killed();
            self.destroy().await;
            return Ok(Outcome::Error(if oom {
                function_error(
                    ErrorKind::OutOfMemory,
                    format!("function ran out of memory (limit {} MB)", self.memory_mb),
                    String::new(),
                )
            } else {
                function_error(
                    ErrorKind::Killed,
                    "the function's process exited unexpectedly; its sandbox was destroyed".into(),
                    String::new(),
                )
            }));
        };
        let status = tokio::time::timeout(EXIT_GRACE, child.wait()).await;
        let oom = live.cgroup.oom_killed();
        let ready = live.ready;
        self.destroy().await;
        let status = match status {
            Ok(Ok(status)) => status,
            _ => {
                return Ok(Outcome::Error(function_error(
                    ErrorKind::Killed,
                    "sandbox closed its connection to sandboxd; it was destroyed".into(),
                    String::new(),
                )));
            }
        };
        if oom {
            return Ok(Outcome::Error(function_error(
                ErrorKind::OutOfMemory,
                format!("function ran out of memory (limit {} MB)", self.memory_mb),
                String::new(),
            )));
        }
        if !ready && status.code() == Some(SETUP_FAILED) {
            return Err(Error::Setup {
                id: self.id.clone(),
                status: describe(status),
            });
        }
        Ok(Outcome::Error(function_error(
            ErrorKind::Killed,
            format!("sandbox exited unexpectedly ({})", describe(status)),
            String::new(),
        )))
    }

    /// Kills everything in the sandbox and removes its cgroup. Idempotent.
    pub async fn destroy(&mut self) {
        let Some(live) = self.live.take() else {
            return;
        };
        let shared = self.shared.clone();
        let id = self.id.clone();
        let function = self.function.clone();
        // Killing and waiting for the cgroup to drain blocks.
        let done = tokio::task::spawn_blocking(move || teardown(&shared, &id, &function, live));
        if let Err(e) = done.await {
            tracing::error!(sandbox = %self.id, error = %e, "sandbox teardown panicked");
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            teardown(&self.shared, &self.id, &self.function, live);
        }
    }
}

fn teardown(shared: &Shared, id: &str, function: &str, live: Live) {
    let Live {
        cgroup,
        child,
        conn,
        parent,
        uid,
        ..
    } = live;
    drop(conn);
    shared.live().remove(id);
    shared.cgroups.recycle(&cgroup);
    // Every process of the sandbox is dead: its uid may serve another.
    drop(uid);
    // The init was in the cgroup, so it is dead now; reap it here, or let
    // tokio's orphan reaper do it if the kernel is slow to report it.
    if let Some(mut child) = child {
        let _ = child.try_wait();
    }
    drop(parent);
    tracing::debug!(sandbox = %id, function, "sandbox destroyed");
}

/// Whether the peer of a socket that carries nothing unasked has gone.
pub(crate) fn closed(fd: std::os::fd::RawFd) -> bool {
    let mut byte = [0u8; 1];
    !matches!(
        nix::sys::socket::recv(
            fd,
            &mut byte,
            nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ),
        Err(nix::errno::Errno::EAGAIN)
    )
}

/// The frame header of an HTTP call.
fn http_header(call_id: &str, http: &HttpRequest) -> Header {
    Header::Http {
        call_id: call_id.into(),
        method: http.method.clone(),
        path: http.path.clone(),
        query: http.query.clone(),
        headers: http
            .headers
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        root_path: http.root_path.clone(),
    }
}

/// One call as it goes over the socket.
struct Call<'a> {
    id: &'a str,
    /// Sent first, to a runtime that has not had them yet.
    limits: Option<Header>,
    request: Header,
    payload: &'a [u8],
    max_result_bytes: u32,
}

/// Sends `call` once the runtime is ready and reads its reply. What the
/// sandbox prints from the moment the request goes out until the reply is
/// in is the call's (`calls` tags it): the runtime flushed everything the
/// call printed before replying. What it printed while importing (the
/// runtime flushes before ready) is no call's.
async fn exchange(
    live: &mut Live,
    calls: Option<&Calls>,
    call: Call<'_>,
) -> Result<Outcome, ProtocolError> {
    if !live.ready {
        match protocol::read_frame(&mut live.conn).await? {
            (Header::Ready, _) => live.ready = true,
            (other, _) => return Err(unexpected(&other)),
        }
    }
    if let Some(limits) = &call.limits {
        protocol::write_frame(&mut live.conn, limits, b"").await?;
    }
    if let Some(calls) = calls {
        calls.begin(call.id).await;
    }
    protocol::write_frame(&mut live.conn, &call.request, call.payload).await?;
    let reply = protocol::read_frame_within(&mut live.conn, call.max_result_bytes).await?;
    // Not on a failed read: the sandbox is then destroyed, and what it
    // printed until its pipes close stays with the call.
    if let Some(calls) = calls {
        calls.end().await;
    }
    match reply {
        (Header::Result, body) => Ok(Outcome::Result(body)),
        (Header::HttpResponse { status, headers }, body) => Ok(Outcome::Http(HttpResponse {
            status: status.into(),
            headers: headers
                .into_iter()
                .map(|(name, value)| HttpHeader { name, value })
                .collect(),
            body,
        })),
        (
            Header::Error {
                kind,
                message,
                traceback,
            },
            _,
        ) => {
            let kind = match kind {
                RuntimeErrorKind::InvalidPayload => ErrorKind::InvalidRequest,
                RuntimeErrorKind::Function | RuntimeErrorKind::InvalidResult => ErrorKind::Function,
                RuntimeErrorKind::CannotStart => ErrorKind::CannotStart,
            };
            Ok(Outcome::Error(function_error(kind, message, traceback)))
        }
        (other, _) => Err(unexpected(&other)),
    }
}

fn unexpected(header: &Header) -> ProtocolError {
    ProtocolError::BadHeader(serde::de::Error::custom(format!(
        "unexpected frame {header:?}"
    )))
}

pub(crate) fn function_error(kind: ErrorKind, message: String, traceback: String) -> FunctionError {
    FunctionError {
        kind: kind as i32,
        message,
        traceback,
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
            Ok(name) => format!("signal {signal} ({})", name.as_str()),
            Err(_) => format!("signal {signal}"),
        },
        _ => status.to_string(),
    }
}

pub(crate) fn or_default<T: PartialEq + Default>(value: T, default: T) -> T {
    if value == T::default() {
        default
    } else {
        value
    }
}

pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.display().to_string();
    move |source| Error::Io { what, path, source }
}

/// Creates one of sandboxd's own directories with exactly `mode`, whatever
/// the umask: sandboxes read the runtime dir as an unprivileged uid.
fn make_dir(path: &Path, mode: u32) -> Result<(), Error> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io("cannot create directory", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("cannot set permissions of", path))
}

/// Written next to the final name and renamed, so a sandbox starting
/// meanwhile (maybe of another instance sharing the data dir) never sees
/// half a file.
fn write_runtime(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> Result<(), Error> {
    let tmp = dir.join(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
    let path = dir.join(name);
    std::fs::write(&tmp, contents).map_err(io("cannot write", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .map_err(io("cannot set permissions of", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("cannot write", &path))
}

fn check_config(config: &Config) -> Result<(), Error> {
    let instance = &config.instance;
    let valid_instance = !instance.is_empty()
        && instance != "."
        && instance != ".."
        && instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid_instance {
        return Err(Error::InvalidConfig(format!(
            "instance {instance:?} must be letters, digits, '-', '_' or '.'"
        )));
    }
    if !config.python.is_absolute() {
        return Err(Error::InvalidConfig(format!(
            "python {} must be an absolute path",
            config.python.display()
        )));
    }
    if config.zygote_uid == 0
        || config.zygote_gid == 0
        || config.zygote_uid == config.sandbox_uid
        || config.zygote_gid == config.sandbox_gid
    {
        return Err(Error::InvalidConfig(
            "zygote_uid and zygote_gid must be neither 0 nor the sandbox uid and gid".into(),
        ));
    }
    if config.sandbox_uid == 0 || config.sandbox_gid == 0 {
        return Err(Error::InvalidConfig(
            "sandbox_uid and sandbox_gid must not be 0: functions never run as root".into(),
        ));
    }
    let function_ids = u64::from(config.function_uid_base)
        ..u64::from(config.function_uid_base) + u64::from(config.function_uids);
    let taken = [
        config.sandbox_uid,
        config.sandbox_gid,
        config.zygote_uid,
        config.zygote_gid,
    ];
    if config.function_uid_base == 0
        || config.function_uids == 0
        || function_ids.end > u64::from(u32::MAX)
        || taken
            .iter()
            .any(|id| function_ids.contains(&u64::from(*id)))
    {
        return Err(Error::InvalidConfig(format!(
            "function_uid_base {} and function_uids {} must make a range of ids above 0, below 2^32-1, \
             holding neither the sandbox nor the zygote ids",
            config.function_uid_base, config.function_uids
        )));
    }
    Ok(())
}

/// Each dir must be an absolute path to a directory with no symlink on the
/// way (beneath `cache_data_dir` when below it). The init and the zygote
/// path check again as they mount, by fd; this check is what gives the
/// caller a clear error.
pub(crate) fn check_dirs(dirs: &[PathBuf], cache_data_dir: Option<&Path>) -> Result<(), Error> {
    for dir in dirs {
        let code_dir = || Error::CodeDir {
            path: dir.display().to_string(),
        };
        if !dir.is_absolute() {
            return Err(code_dir());
        }
        match mounts::open_untrusted_dir(dir, cache_data_dir) {
            Ok(_) => {}
            Err(e) if e.is_unsafe_path() => return Err(Error::UnsafeDir(e.to_string())),
            Err(_) => return Err(code_dir()),
        }
    }
    Ok(())
}

pub(crate) fn check_spec(spec: &SandboxSpec, cache_data_dir: Option<&Path>) -> Result<(), Error> {
    check_dirs(std::slice::from_ref(&spec.code_dir), cache_data_dir)?;
    check_dirs(&spec.package_dirs, cache_data_dir)?;
    let entry = Path::new(&spec.entry_file);
    if !entry
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(Error::InvalidRequest(format!(
            "entry file {:?} must be a relative path inside the function's bundle",
            spec.entry_file
        )));
    }
    for (key, value) in &spec.environment {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            return Err(Error::InvalidRequest(format!(
                "environment variable {key:?} is not valid: names must be non-empty \
                 without '=' or NUL, values without NUL"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_limits_take_the_default() {
        assert_eq!(or_default(0u64, 128), 128);
        assert_eq!(or_default(64u64, 128), 64);
    }

    #[test]
    fn statuses_read_like_a_person_would_say_them() {
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(describe(ExitStatus::from_raw(9)), "signal 9 (SIGKILL)");
    }

    #[test]
    fn entry_files_cannot_escape_the_bundle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = |entry: &str| SandboxSpec {
            code_dir: dir.path().to_path_buf(),
            entry_file: entry.into(),
            ..SandboxSpec::default()
        };
        assert!(check_spec(&spec("f.py"), None).is_ok());
        assert!(check_spec(&spec("src/handler.py"), None).is_ok());
        let err = check_spec(&spec("../f.py"), None).expect_err("escapes");
        assert!(err.to_string().contains("must be a relative path"), "{err}");
        assert!(check_spec(&spec("/etc/passwd"), None).is_err());
    }

    #[test]
    fn bad_environment_names_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = SandboxSpec {
            code_dir: dir.path().to_path_buf(),
            environment: vec![("A=B".into(), "c".into())],
            ..SandboxSpec::default()
        };
        let err = check_spec(&spec, None).expect_err("'=' in a name");
        assert!(err.to_string().contains("\"A=B\" is not valid"), "{err}");
    }

    #[test]
    fn a_zygote_with_a_child_cannot_retire_and_a_retired_one_forks_none() {
        let children = Children::default();
        let child = children.enter().expect("a fresh zygote forks");
        let sibling = child.sibling();
        assert_eq!(children.count(), 2);
        assert!(!children.retire_if_none(), "retired with two children");
        drop((child, sibling));
        assert_eq!(children.count(), 0);
        assert!(children.retire_if_none());
        assert!(children.is_retired());
        assert!(children.enter().is_none(), "a retired zygote forked");
        assert_eq!(children.count(), 0);
    }

    #[test]
    fn instance_names_stay_one_path_component() {
        for bad in ["", "..", "a/b", "x y"] {
            let config = Config {
                instance: bad.into(),
                ..Config::default()
            };
            assert!(check_config(&config).is_err(), "{bad:?} accepted");
        }
        assert!(check_config(&Config::default()).is_ok());
    }
}
