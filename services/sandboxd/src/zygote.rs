//! Zygotes: sandboxes whose Python imported a package set and then forks
//! children that start with those imports already done.
//!
//! A root zygote is a fresh sandbox whose runtime (`sock_zygote.py`)
//! became root of a user namespace of its own (unprivileged on the host).
//! Every other zygote, and every function sandbox made this way, is a
//! child forked from one. For each fork sandboxd prepares, from outside:
//! a cgroup from the pool (the child writes itself into its
//! `cgroup.procs`, opened by sandboxd), a detached mount tree as its root (the
//! zygote's package dirs at the same paths, then the function's code and
//! its own packages), a socketpair and two pipes for its output. The fds
//! go to the zygote in one SCM_RIGHTS message, then the request as a
//! frame; the child says `forked` once it is in its cgroup, root and
//! namespaces and (a function) unprivileged under seccomp.
//!
//! Architecture invariant: a zygote holds no host privilege. The powers a
//! fork needs (chroot, unshare) come from its user namespace; what needs
//! host root (cgroups, mounts) sandboxd does before the fork.
//!
//! The root zygote's user namespace is owned by `zygote_uid` (65533), not
//! host root. A child's root is a *detached* mount tree: a thread with a
//! private mount namespace builds it as the init does, then
//! `open_tree(OPEN_TREE_CLONE|AT_RECURSIVE)`; the chain's package dirs sit
//! at the zygote's `/packages/N`, then `/code` and the function's other
//! package dirs. A child zygote gets its root, output and cgroup files
//! with its `fork` frame; a function child is parked first and gets
//! everything of its function over its own socket (`sock_sandbox`'s
//! zygote loop). Copy-on-write pages stay charged to the zygote (v1 moves
//! no charges). A fork that fails (the zygote died under it, no cgroup or
//! root for the child) is tried from each living ancestor, deepest first.
//! Children live in their zygote's pid namespace, so a zygote's death
//! kills them (sandboxd then skips a dead idle sandbox and starts
//! another).
//!
//! This file is a zygote's lifecycle: start, fork, park, destroy. The
//! fds of a fork are [`crate::fork`]'s; how many children stay parked,
//! [`crate::demand`]'s.
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sock_sandbox::cgroups::{CgroupLimits, SandboxCgroup};
use sock_sandbox::init::{ZygoteInit, envp};
use sock_sandbox::mounts::{self, RealHost, RootSpec};
use sock_sandbox::protocol::{self, ForkKind, ForkRequest, Header};
use sock_sandbox::seccomp::{self, Profile, Programs};
use sock_sandbox::spares::Spares;
use tokio::net::UnixStream;
use tracing::Instrument;

use crate::children::{ChildOf, Children};
use crate::demand::{Demand, Forking, MAX_SPARES};
use crate::error::Error;
use crate::fork::{cgroup_files, output_pipes, send, socketpair};
use crate::logs::forward_logs;
use crate::sandbox::{Live, Sandbox, closed};
use crate::sandboxes::{Sandboxes, Shared};
use crate::spec::{SandboxSpec, check_dirs, check_spec};

/// How long a child may take to reach `forked`: setup only, no imports.
const FORK_TIMEOUT: Duration = Duration::from_secs(10);

/// One node of the import-cache tree, as a zygote serves it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ZygoteSpec {
    /// The node's id ("root", "root/numpy==2.1.0").
    pub id: String,
    /// Host package dirs this node adds to its parent's.
    pub package_dirs: Vec<PathBuf>,
    /// Top-level modules this node imports (after its parent's).
    pub imports: Vec<String>,
}

/// What a forked child is to be, besides the fork request itself.
struct ChildPlan {
    /// The function's name, or the zygote's for a child zygote.
    function: Arc<str>,
    /// The function's code; None for a child zygote.
    code_dir: Option<PathBuf>,
    /// Host package dirs the child adds to this zygote's.
    extra: Vec<PathBuf>,
    memory_mb: u64,
    limits: CgroupLimits,
}

/// A live zygote. Dropping it destroys it, and with it every child still
/// running: they live in its pid namespace.
pub struct Zygote {
    id: String,
    /// Host package dirs of the chain up to here, in order: children find
    /// them at the same sandbox paths, as the imported modules expect.
    package_dirs: Vec<PathBuf>,
    sandbox: Mutex<Option<Sandbox>>,
    cgroup: Option<Arc<SandboxCgroup>>,
    memory_mb: u64,
    /// A second handle on the zygote's socket, for fork requests.
    control: tokio::sync::Mutex<UnixStream>,
    children: Children,
    last_fork: Mutex<Instant>,
    /// Children forked ahead of need; see [`Zygote::park_spare`].
    spares: Spares<Spare>,
    /// Held while spares are parked: one refill at a time.
    parking: tokio::sync::Mutex<()>,
    demand: Mutex<Demand>,
    shared: Arc<Shared>,
}

impl Sandboxes {
    /// The memory limit of every zygote, in MB.
    pub fn zygote_memory_mb(&self) -> u64 {
        self.shared.config.zygote_memory_mb
    }

    /// How long after a failed start a zygote is first tried again.
    pub fn zygote_retry(&self) -> Duration {
        Duration::from_millis(self.shared.config.zygote_retry_ms)
    }

    /// Starts a root zygote: a fresh sandbox that imports `node`'s modules
    /// and waits for fork requests. Waits up to `timeout` for the imports.
    pub async fn create_zygote(
        &self,
        node: &ZygoteSpec,
        timeout: Duration,
    ) -> Result<Zygote, Error> {
        check_dirs(&node.package_dirs, Some(&self.shared.cache_data_dir))?;
        let config = &self.shared.config;
        let memory_mb = config.zygote_memory_mb;
        let zygote_config = serde_json::json!({
            "package_dirs": (0..node.package_dirs.len()).map(mounts::package_dir).collect::<Vec<_>>(),
            "imports": node.imports,
        });
        let init_spec = sock_sandbox::init::InitSpec {
            package_dirs: node.package_dirs.clone(),
            seccomp: zygote_seccomp()?,
            zygote: Some(ZygoteInit {
                host_uid: config.zygote_uid,
                host_gid: config.zygote_gid,
                function_uid_base: config.function_uid_base,
                function_uids: config.function_uids,
                config: zygote_config.to_string(),
            }),
            ..self.init_spec()
        };
        let limits = zygote_limits(&self.shared);
        let mut sandbox = self
            .start(
                zygote_name(&node.id),
                memory_mb,
                limits,
                init_spec,
                true,
                None,
            )
            .await?;
        if let Err(why) = sandbox.expect(Header::Ready, timeout).await {
            sandbox.destroy().await;
            return Err(Error::Zygote {
                id: node.id.clone(),
                why,
            });
        }
        Zygote::new(
            node.id.clone(),
            node.package_dirs.clone(),
            sandbox,
            memory_mb,
            &self.shared,
        )
    }
}

/// The zygote filter (see `seccomp::Profile::Zygote`), compiled once: a
/// zygote and each child zygote install it.
fn zygote_seccomp() -> Result<Programs, Error> {
    static PROGRAMS: OnceLock<Programs> = OnceLock::new();
    if let Some(programs) = PROGRAMS.get() {
        return Ok(programs.clone());
    }
    let programs = seccomp::compile_profile(Profile::Zygote)?;
    Ok(PROGRAMS.get_or_init(|| programs).clone())
}

/// The `Pss:` line of a `/proc/<pid>/smaps_rollup`, in kB.
fn pss_kb_of(smaps_rollup: &str) -> Option<u64> {
    smaps_rollup.lines().find_map(|line| {
        let kb = line.strip_prefix("Pss:")?.trim().strip_suffix("kB")?;
        kb.trim().parse().ok()
    })
}

fn zygote_name(id: &str) -> Arc<str> {
    format!("zygote {id}").into()
}

fn zygote_limits(shared: &Shared) -> CgroupLimits {
    CgroupLimits {
        memory_bytes: shared.config.zygote_memory_mb << 20,
        pids: shared.config.pids,
        cpu_percent: 0,
    }
}

impl Zygote {
    fn new(
        id: String,
        package_dirs: Vec<PathBuf>,
        sandbox: Sandbox,
        memory_mb: u64,
        shared: &Arc<Shared>,
    ) -> Result<Zygote, Error> {
        let conn = sandbox.conn().ok_or_else(|| Error::Destroyed {
            id: sandbox.id().to_string(),
        })?;
        let control = conn
            .as_fd()
            .try_clone_to_owned()
            .and_then(|fd| UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)))
            .map_err(|source| Error::Spec {
                id: sandbox.id().to_string(),
                source,
            })?;
        Ok(Zygote {
            id,
            package_dirs,
            cgroup: sandbox.cgroup(),
            sandbox: Mutex::new(Some(sandbox)),
            memory_mb,
            control: tokio::sync::Mutex::new(control),
            children: Children::default(),
            last_fork: Mutex::new(Instant::now()),
            spares: Spares::new(MAX_SPARES),
            parking: tokio::sync::Mutex::new(()),
            demand: Mutex::new(Demand::new(Instant::now())),
            shared: shared.clone(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Children (function sandboxes and zygotes) forked from this one that
    /// still live.
    pub fn children(&self) -> usize {
        self.children.count()
    }

    /// When this zygote last forked (or was created).
    pub fn last_fork(&self) -> Instant {
        *self.last_fork.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The zygote's memory limit in MB.
    pub fn memory_mb(&self) -> u64 {
        self.memory_mb
    }

    /// Memory its cgroup charges now: the imports its children share.
    pub fn memory_usage(&self) -> u64 {
        self.cgroup.as_ref().map_or(0, |c| c.memory_usage())
    }

    /// The proportional set size of the zygote's processes, in kB: what it
    /// costs the node, its pages shared with its children split among
    /// them (the cgroup's charge counts shared pages in full). The
    /// zygote's cgroup holds only its own processes: each child has a
    /// cgroup of its own. Reads `/proc`; 0 once the zygote is gone.
    pub fn pss_kb(&self) -> u64 {
        let pids = self.cgroup.as_ref().map_or_else(Vec::new, |c| c.pids());
        pids.iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
            .filter_map(|rollup| pss_kb_of(&rollup))
            .sum()
    }

    /// The zygote's cgroup directories while it lives.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.sandbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.cgroup_dirs().to_vec())
            .unwrap_or_default()
    }

    /// Whether the zygote can fork: not destroyed, and its process still
    /// holds its socket (a zygote never writes after `ready`, so anything
    /// to read means it closed).
    pub fn is_alive(&self) -> bool {
        if self.children.is_retired() {
            return false;
        }
        let destroyed = self
            .sandbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|s| !s.is_alive());
        if destroyed {
            return false;
        }
        let Ok(control) = self.control.try_lock() else {
            // A fork is being sent right now.
            return true;
        };
        !closed(control.as_raw_fd())
    }

    /// Marks the zygote for eviction if it has no child, so that no fork
    /// starts any more; false if it has a child.
    pub fn retire(&self) -> bool {
        self.children.retire_if_none()
    }

    /// Kills the zygote (and any child still running) and its parked
    /// children. Idempotent.
    pub async fn destroy(&self) {
        for spare in self.spares.close() {
            spare.discard().await;
        }
        let sandbox = self
            .sandbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut sandbox) = sandbox {
            sandbox.destroy().await;
        }
    }

    /// Forks a function sandbox: the function's code at /code, this
    /// zygote's packages and then `spec.package_dirs` on `sys.path`, its
    /// limits, and everything this zygote imported already imported.
    pub async fn fork(&self, spec: SandboxSpec) -> Result<Sandbox, Error> {
        let shared = &self.shared;
        check_spec(&spec, Some(&shared.cache_data_dir))?;
        let memory_mb = shared.memory_mb(&spec.limits);
        let limits = shared.cgroup_limits(&spec.limits);
        let extra: Vec<PathBuf> = spec
            .package_dirs
            .iter()
            .filter(|dir| !self.package_dirs.contains(dir))
            .cloned()
            .collect();
        let entry_file = if spec.entry_file.is_empty() {
            "f.py".to_string()
        } else {
            spec.entry_file.clone()
        };
        let request = ForkRequest {
            kind: ForkKind::Function,
            package_dirs: self.sandbox_paths(extra.len()),
            imports: Vec::new(),
            entry_file,
            environment: envp(&spec.environment),
            // A function's own ids come with its frame, in `give`.
            uid: 0,
            gid: 0,
            seccomp: shared.seccomp.clone(),
            cgroups: 0,
        };
        let plan = ChildPlan {
            function: spec.function.as_str().into(),
            code_dir: Some(spec.code_dir),
            extra,
            memory_mb,
            limits,
        };
        let parent = self.enter_child()?;
        let _forking = Forking::start(&self.demand);
        if let Some(spare) = self.spares.take() {
            match self.give(&parent, spare, &plan, &request).await {
                Ok(sandbox) => return Ok(sandbox),
                Err(e) => {
                    tracing::warn!(zygote = %self.id, error = %e, "the parked child did not take the function");
                }
            }
        }
        // The long way is the same way: park a child, then give it the
        // function over its own socket.
        let spare = self.park(limits).await?;
        self.give(&parent, spare, &plan, &request).await
    }

    /// Forks a child zygote for `node`: it imports `node.imports` from
    /// `node.package_dirs` on top of what this one imported. Waits up to
    /// `timeout` for the imports.
    pub async fn fork_zygote(&self, node: &ZygoteSpec, timeout: Duration) -> Result<Zygote, Error> {
        let shared = &self.shared;
        check_dirs(&node.package_dirs, Some(&shared.cache_data_dir))?;
        let request = ForkRequest {
            kind: ForkKind::Zygote,
            package_dirs: self.sandbox_paths(node.package_dirs.len()),
            imports: node.imports.clone(),
            entry_file: String::new(),
            environment: Vec::new(),
            // A function's own ids come with its frame, in `give`.
            uid: 0,
            gid: 0,
            seccomp: zygote_seccomp()?,
            cgroups: 0,
        };
        let memory_mb = shared.config.zygote_memory_mb;
        let mut sandbox = self
            .fork_child(
                ChildPlan {
                    function: zygote_name(&node.id),
                    code_dir: None,
                    extra: node.package_dirs.clone(),
                    memory_mb,
                    limits: zygote_limits(shared),
                },
                request,
            )
            .await?;
        if let Err(why) = sandbox.expect(Header::Ready, timeout).await {
            sandbox.destroy().await;
            return Err(Error::Zygote {
                id: node.id.clone(),
                why,
            });
        }
        let mut dirs = self.package_dirs.clone();
        dirs.extend(node.package_dirs.iter().cloned());
        Zygote::new(node.id.clone(), dirs, sandbox, memory_mb, shared)
    }

    /// Sandbox paths of `n` package dirs that come after this zygote's.
    fn sandbox_paths(&self, n: usize) -> Vec<String> {
        (self.package_dirs.len()..self.package_dirs.len() + n)
            .map(mounts::package_dir)
            .collect()
    }

    /// Counts a child about to be made, before anything else, so eviction
    /// cannot pick this zygote while the child is being made.
    fn enter_child(&self) -> Result<ChildOf, Error> {
        let parent = self.children.enter().ok_or_else(|| Error::Fork {
            zygote: self.id.clone(),
            why: "the zygote is being evicted".into(),
        })?;
        *self.last_fork.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        Ok(parent)
    }

    /// Forks a child zygote: it gets its root and output with the fork
    /// request (no function's secrets are in either).
    async fn fork_child(
        &self,
        plan: ChildPlan,
        mut request: ForkRequest,
    ) -> Result<Sandbox, Error> {
        let shared = &self.shared;
        let parent = self.enter_child()?;
        let ChildPlan {
            function,
            code_dir,
            extra,
            memory_mb,
            limits,
        } = plan;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let cgroup = shared.take_cgroup(&id, limits)?;
        let prepared = async {
            let files = cgroup_files(&cgroup)?;
            let root = self.root(&id, code_dir.as_deref(), &extra).await?;
            let (ours, theirs) = socketpair()?;
            let (pipes, readers) = output_pipes()?;
            Ok::<_, Error>((files, root, ours, theirs, pipes, readers))
        }
        .await;
        let (files, root, ours, theirs, (out, err), (out_r, err_r)) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                shared.abandon(&id, cgroup).await;
                return Err(e);
            }
        };
        request.cgroups = files.len();
        forward_logs(&function, &id, Some(out_r), Some(err_r));
        let mut fds = vec![theirs, root, out, err];
        fds.extend(files);
        let sent = {
            let mut control = self.control.lock().await;
            send(&mut control, fds, &Header::Fork(request)).await
        };
        let sandbox = Sandbox::new(
            id,
            function,
            memory_mb,
            shared.clone(),
            Live {
                cgroup,
                child: None,
                conn: ours,
                ready: false,
                parent: Some(parent),
                uid: None,
            },
        );
        self.forked(sandbox, sent).await
    }

    /// Waits for a child to say `forked`; destroys it if it does not.
    async fn forked(
        &self,
        mut sandbox: Sandbox,
        sent: Result<(), String>,
    ) -> Result<Sandbox, Error> {
        let forked = match sent {
            Ok(()) => sandbox.expect(Header::Forked, FORK_TIMEOUT).await,
            Err(e) => Err(format!("cannot send the fork request: {e}")),
        };
        match forked {
            Ok(()) => Ok(sandbox),
            Err(why) => {
                sandbox.destroy().await;
                Err(Error::Fork {
                    zygote: self.id.clone(),
                    why,
                })
            }
        }
    }

    /// Makes a function sandbox of a parked child: its root and output,
    /// then the function's request (ids, environment, seccomp) over the
    /// child's own socket, never through the zygote.
    async fn give(
        &self,
        parent: &ChildOf,
        mut spare: Spare,
        plan: &ChildPlan,
        request: &ForkRequest,
    ) -> Result<Sandbox, Error> {
        let (function, code_dir, extra) = (&plan.function, plan.code_dir.as_deref(), &plan.extra);
        let mut cgroup = spare.cgroup.take().expect("a parked child has its cgroup");
        let mut conn = spare.conn.take().expect("a parked child has its socket");
        let shared = &self.shared;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let uid = match shared.uids.take() {
            Ok(uid) => uid,
            Err(e) => {
                shared.recycle(cgroup).await;
                return Err(e);
            }
        };
        let request = ForkRequest {
            uid: uid.get(),
            gid: uid.get(),
            ..request.clone()
        };
        if let Err(e) = cgroup.set_limits(plan.limits) {
            shared.recycle(cgroup).await;
            return Err(e.into());
        }
        let cgroup = shared.adopt(&id, cgroup);
        let prepared = async {
            let root = self.root(&id, code_dir, extra).await?;
            let (pipes, readers) = output_pipes()?;
            Ok::<_, Error>((root, pipes, readers))
        }
        .instrument(tracing::info_span!("sandbox.root"))
        .await;
        let (root, (out, err), (out_r, err_r)) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                shared.abandon(&id, cgroup).await;
                return Err(e);
            }
        };
        forward_logs(function, &id, Some(out_r), Some(err_r));
        let sent = send(&mut conn, vec![root, out, err], &Header::Fork(request)).await;
        let sandbox = Sandbox::new(
            id,
            function.clone(),
            plan.memory_mb,
            shared.clone(),
            Live {
                cgroup,
                child: None,
                conn,
                ready: false,
                parent: Some(parent.sibling()),
                uid: Some(uid),
            },
        );
        self.forked(sandbox, sent)
            .instrument(tracing::info_span!("sandbox.handover"))
            .await
    }

    /// Forks children ahead of need and parks them, as many as recent
    /// demand wants (see `demand.rs`): each in its own cgroup (the default
    /// limits until it serves a function) and namespaces, pid 1, waiting
    /// for a function. A [`fork`](Self::fork) that finds one skips the
    /// fork, the cgroup move and the namespaces. A no-op while another
    /// refill runs or enough are parked.
    pub async fn park_spare(&self) -> Result<(), Error> {
        let Ok(_refill) = self.parking.try_lock() else {
            return Ok(());
        };
        let shared = &self.shared;
        loop {
            let wanted = self
                .demand
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .wanted(Instant::now());
            if self.parked() >= wanted {
                return Ok(());
            }
            let spare = self.park(shared.cgroup_limits(&Default::default())).await?;
            if let Err(unwanted) = self.spares.put(spare) {
                // Destroyed meanwhile.
                unwanted.discard().await;
                return Ok(());
            }
        }
    }

    /// Children parked right now.
    pub fn parked(&self) -> usize {
        self.spares.len()
    }

    /// Forks a child into a pool cgroup with `limits` and its own
    /// namespaces, and waits until it is parked; the cgroup goes back to
    /// the pool if it does not park.
    async fn park(&self, limits: CgroupLimits) -> Result<Spare, Error> {
        let shared = &self.shared;
        let cgroup = shared.take_spare_cgroup(limits)?;
        match self.park_in(&cgroup).await {
            Ok(conn) => Ok(Spare {
                cgroup: Some(cgroup),
                conn: Some(conn),
                shared: shared.clone(),
            }),
            Err(e) => {
                shared.recycle(cgroup).await;
                Err(e)
            }
        }
    }

    /// Forks a child into `cgroup` and its own namespaces, and waits until
    /// it is parked; returns its socket.
    async fn park_in(&self, cgroup: &SandboxCgroup) -> Result<UnixStream, Error> {
        let files = cgroup_files(cgroup)?;
        let (mut ours, theirs) = socketpair()?;
        let request = ForkRequest {
            kind: ForkKind::Spare,
            package_dirs: Vec::new(),
            imports: Vec::new(),
            entry_file: String::new(),
            environment: Vec::new(),
            // A function's own ids come with its frame, in `give`.
            uid: 0,
            gid: 0,
            seccomp: Vec::new(),
            cgroups: files.len(),
        };
        let mut fds = vec![theirs];
        fds.extend(files);
        let fork = |why| Error::Fork {
            zygote: self.id.clone(),
            why,
        };
        {
            let mut control = self.control.lock().await;
            send(&mut control, fds, &Header::Fork(request))
                .await
                .map_err(fork)?;
        }
        match tokio::time::timeout(FORK_TIMEOUT, protocol::read_frame(&mut ours)).await {
            Ok(Ok((Header::Parked, _))) => Ok(ours),
            Ok(Ok((other, _))) => Err(fork(format!("sent {other:?} instead of Parked"))),
            Ok(Err(e)) => Err(fork(e.to_string())),
            Err(_) => Err(fork(format!("not parked within {FORK_TIMEOUT:?}"))),
        }
    }

    /// The child's root: a detached tree with this zygote's package dirs,
    /// then `extra`, and the code at /code.
    async fn root(
        &self,
        id: &str,
        code_dir: Option<&Path>,
        extra: &[PathBuf],
    ) -> Result<OwnedFd, Error> {
        let shared = &self.shared;
        let mut package_dirs = self.package_dirs.clone();
        package_dirs.extend(extra.iter().cloned());
        let steps = mounts::plan(
            &RootSpec {
                code_dir,
                runtime_dir: &shared.runtime_dir,
                package_dirs: &package_dirs,
                tmp_mb: shared.config.tmp_mb,
                extra: &[],
                cache_data_dir: Some(&shared.cache_data_dir),
            },
            &RealHost,
        );
        let mount_point = shared.mount_point.clone();
        tokio::task::spawn_blocking(move || mounts::detached_root(&mount_point, steps))
            .await
            .map_err(|e| Error::Spec {
                id: id.to_string(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(|e| Error::Root {
                id: id.to_string(),
                why: e.to_string(),
            })
    }
}

/// A child forked ahead of need, parked until a function comes.
struct Spare {
    /// Both taken when the child becomes a sandbox.
    cgroup: Option<SandboxCgroup>,
    conn: Option<UnixStream>,
    shared: Arc<Shared>,
}

impl Spare {
    /// Kills the child and gives its cgroup back, on a blocking thread.
    async fn discard(mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            self.shared.recycle(cgroup).await;
        }
    }
}

/// [`Zygote::destroy`] discards parked children on a blocking thread; this
/// covers one dropped undiscarded (a zygote dropped undestroyed), on the
/// dropping thread, because a task queued at shutdown may never run and
/// would leave its cgroup behind.
impl Drop for Spare {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            self.shared.recycle_here(&cgroup);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pss_is_read_from_the_rollup() {
        let rollup = "55d0c0a00000-7ffc8f5fe000 ---p 00000000 00:00 0                          [rollup]\n\
                      Rss:               25804 kB\n\
                      Pss:               12345 kB\n\
                      Pss_Dirty:          8000 kB\n\
                      Pss_Anon:           7000 kB\n";
        assert_eq!(pss_kb_of(rollup), Some(12345));
        assert_eq!(pss_kb_of("Rss: 1 kB\n"), None);
    }
}
