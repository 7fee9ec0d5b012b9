//! What all sandboxes of one sandboxd share: the config, the data dir
//! and the runtime dir in it, the pools of cgroups, network namespaces
//! and uids, and the live sandboxes' cgroups. [`Sandboxes::new`] prepares
//! them (and removes what a crashed run left); everything that makes a
//! sandbox or a zygote takes its resources here and gives them back here.
//! One sandbox's lifecycle is [`crate::sandbox`]'s.
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sock_sandbox::cgroups::{self, CgroupLimits, CgroupPool, SandboxCgroup};
use sock_sandbox::init::{INIT_ARG, InitSpec};
use sock_sandbox::mounts;
use sock_sandbox::namespaces::{self, NetnsPool};
use sock_sandbox::seccomp::{self, Programs};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use crate::config::Config;
use crate::error::{Error, StartError, io};
use crate::logs::{self, forward_logs};
use crate::spec::Limits;
use crate::uids::UidPool;

/// Below sandboxd's data dir: the output dirs of source builds
/// ([`crate::build`]).
pub(crate) const BUILDS_DIR: &str = "builds";

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

    /// Kills what is in a cgroup no sandbox owns and gives it back, on a
    /// blocking thread: killing waits for the cgroup to empty.
    pub async fn recycle(self: &Arc<Self>, cgroup: SandboxCgroup) {
        let shared = self.clone();
        let _ = tokio::task::spawn_blocking(move || shared.cgroups.recycle(&cgroup)).await;
    }

    /// [`recycle`](Self::recycle) on the calling thread, for a drop.
    pub fn recycle_here(&self, cgroup: &SandboxCgroup) {
        self.cgroups.recycle(cgroup);
    }

    /// Gives back the cgroup of a sandbox that never started (blocks while
    /// whatever joined it is killed).
    pub async fn abandon(self: &Arc<Self>, id: &str, cgroup: Arc<SandboxCgroup>) {
        let shared = self.clone();
        let id = id.to_string();
        let _ = tokio::task::spawn_blocking(move || shared.release(&id, &cgroup)).await;
    }

    /// Forgets the live sandbox `id` and gives its cgroup back (blocks
    /// while whatever is in it is killed).
    pub fn release(&self, id: &str, cgroup: &SandboxCgroup) {
        self.live().remove(id);
        self.cgroups.recycle(cgroup);
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
    pub fn new(config: Config) -> Result<Sandboxes, StartError> {
        let uid = nix::unistd::geteuid();
        if !uid.is_root() {
            return Err(StartError::NotRoot { uid: uid.as_raw() });
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
        crate::runtime::write(&runtime_dir, config.import_cache, &init_program)?;

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
        remove_leftover_builds(&data_dir);
        if config.cgroup_favor_dynmods
            && let Err(e) = cgroups::favor_dynmods()
        {
            tracing::warn!(error = %e, "cgroup moves stay slow");
        }
        let seccomp = seccomp::compile().map_err(Error::from)?;
        let cgroups = CgroupPool::new(&config.instance, config.cgroup_pool_size);
        let netns = NetnsPool::new(config.netns_pool_size);
        let uids = UidPool::new(config.function_uid_base, config.function_uids);
        let cache_data_dir = std::path::absolute(&config.cache_data_dir).map_err(|e| {
            StartError::InvalidConfig(format!(
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

    /// Spawns the init in the cgroup and hands it its spec. A returned
    /// error leaves no process: the child is killed when dropped.
    pub(crate) async fn spawn(
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

fn or_default<T: PartialEq + Default>(value: T, default: T) -> T {
    if value == T::default() {
        default
    } else {
        value
    }
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

fn check_config(config: &Config) -> Result<(), StartError> {
    let instance = &config.instance;
    let valid_instance = !instance.is_empty()
        && instance != "."
        && instance != ".."
        && instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid_instance {
        return Err(StartError::InvalidConfig(format!(
            "instance {instance:?} must be letters, digits, '-', '_' or '.'"
        )));
    }
    if !config.python.is_absolute() {
        return Err(StartError::InvalidConfig(format!(
            "python {} must be an absolute path",
            config.python.display()
        )));
    }
    if config.zygote_uid == 0
        || config.zygote_gid == 0
        || config.zygote_uid == config.sandbox_uid
        || config.zygote_gid == config.sandbox_gid
    {
        return Err(StartError::InvalidConfig(
            "zygote_uid and zygote_gid must be neither 0 nor the sandbox uid and gid".into(),
        ));
    }
    if config.sandbox_uid == 0 || config.sandbox_gid == 0 {
        return Err(StartError::InvalidConfig(
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
        return Err(StartError::InvalidConfig(format!(
            "function_uid_base {} and function_uids {} must make a range of ids above 0, below 2^32-1, \
             holding neither the sandbox nor the zygote ids",
            config.function_uid_base, config.function_uids
        )));
    }
    Ok(())
}

/// At start: output dirs of builds a crashed run left (no build runs yet).
fn remove_leftover_builds(data_dir: &Path) {
    let builds = data_dir.join(BUILDS_DIR);
    let left = std::fs::read_dir(&builds).map_or(0, Iterator::count);
    match std::fs::remove_dir_all(&builds) {
        Ok(()) if left > 0 => tracing::warn!(left, "removed leftover build dirs"),
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %builds.display(), %error, "cannot remove leftover build dirs");
        }
        _ => {}
    }
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
