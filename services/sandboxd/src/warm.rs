//! The node's sandboxes as a whole: warm reuse, the memory pool, pausing
//! and the evictor.
//!
//! A call takes an idle (maybe paused) sandbox of its exact function
//! version, touching no other service; only on a miss does it prepare the
//! code, reserve memory (waiting in line, bounded by its deadline) and
//! create a sandbox. Afterwards a healthy sandbox goes back idle, and is
//! paused once idle for `pause_after_ms` (unless its function says
//! `reuse-sandbox: false`: then each call gets a sandbox of its own, forked
//! from a zygote when one fits, destroyed after it). A newer version retires the idle
//! sandboxes of older ones. The evictor frees memory for waiting calls, or
//! when the machine runs low, by destroying paused sandboxes first, then
//! idle ones and childless zygotes, least recently used first (a zygote
//! before a sandbox of the same age); running ones and zygotes with live
//! children never. Idle and paused sandboxes whose runtime died while they
//! waited are swept away every second.
//!
//! A cold start with an import-cache chain forks from that chain's zygote
//! (made lazily by the zygote [`Tree`]); without one, or when the zygote
//! cannot fork, it starts a fresh sandbox.
//!
//! Details. Paused means frozen, with the cgroup's memory limit shrunk to
//! what it uses (restored before the thaw). A sandbox goes back idle
//! unless it timed out, was OOM-killed or died. A `reuse-sandbox: false`
//! function (`FunctionConfig.fresh_sandbox_per_call`) never parks: its
//! sandbox is destroyed (`Why::OneCall`) after answering, in the background,
//! at most 16 teardowns at once (past that, the next call to end waits for
//! one). The sweeper destroys (`Why::Died`) idle and paused sandboxes whose
//! runtime died while they waited (killed from outside, or with their
//! zygote), so neither `Status` nor the pool counts them until a call or
//! the evictor finds them. The evictor runs when the pool's head waiter does
//! not fit or `MemAvailable` falls under `min_free_mb`; a zygote's age is
//! its last fork. A fork counts its child before it starts, and eviction
//! retires a zygote only while that count is zero (one atomic), so a
//! zygote picked as childless is never killed under a fork that was just
//! starting; a retired zygote forks none, and the call goes to a new
//! zygote or a fresh sandbox.
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use sock_proto::v1::{ErrorKind, HttpRequest};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::call::Outcome;
use crate::config::Config;
use crate::error::{Error, StartError};
use crate::pool::{MemoryPool, PoolSnapshot};
use crate::safe::{
    Event, EventKind, Key, Lease, Listener, Listeners, Phase, SafeSandbox, Unleased, Why,
};
use crate::sandbox::Sandbox;
use crate::sandboxes::Sandboxes;
use crate::spec::SandboxSpec;
use crate::tree::{Node, NodeReport, Tree, Uses, ZygoteInfo};
use crate::zygote::ZygoteSpec;

/// How often the free-memory watcher looks at the machine.
const MEMINFO_PERIOD: Duration = Duration::from_secs(1);
/// How often idle and paused sandboxes are checked for a runtime that died
/// while they waited.
const SWEEP_PERIOD: Duration = Duration::from_secs(1);
/// The pool's size when `mem_pool_mb` is 0: RAM minus this.
const HOST_RESERVE_MB: u64 = 500;
/// How long shutdown waits for killed sandboxes to be torn down.
const TEARDOWN_WAIT: Duration = Duration::from_secs(5);
/// Sandboxes a call's end may leave being torn down at once; past that the
/// next call to end waits for one, so a storm of one-call sandboxes cannot
/// pile up teardowns (each keeps its memory reserved until done).
const TEARDOWNS_IN_FLIGHT: usize = 16;
/// Threads that tear down a batch of sandboxes (shutdown, retired ones).
const TEARDOWN_THREADS: usize = 8;

/// What the cache prepared for a cold start.
pub(crate) struct Prepared {
    /// The version the code belongs to (may be newer than asked for).
    pub version: u64,
    pub spec: SandboxSpec,
    /// The zygotes to fork from, root first; None: a fresh sandbox.
    pub chain: Option<Vec<ZygoteSpec>>,
}

/// One call, as the service hands it over.
pub(crate) struct Call<'a> {
    pub name: &'a str,
    pub version: u64,
    pub call_id: &'a str,
    pub payload: &'a [u8],
    /// Set for an HTTP call.
    pub http: Option<&'a HttpRequest>,
    /// `reuse-sandbox: false`: a sandbox of its own, destroyed after it.
    pub one_call: bool,
    /// The call's wall-clock limit: the memory wait and the run together.
    pub timeout: Duration,
}

/// Sandboxes and pool, for Status.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct NodeStatus {
    pub idle: u32,
    pub paused: u32,
    pub running: u32,
    pub pool: PoolSnapshot,
    /// Bytes the live idle and paused sandboxes' cgroups charge.
    pub used_bytes: u64,
    pub evictions: u64,
    pub warm_starts: u64,
    pub cold_starts: u64,
    /// (name, version) → (idle, paused, running).
    pub functions: Vec<(Key, [u32; 3])>,
    pub spare_cgroups: u32,
    pub spare_netns: u32,
    /// Cold starts forked from a zygote.
    pub forks: u64,
    /// Zygote starts that failed (each then backs off).
    pub zygote_start_failures: u64,
    pub zygotes: Vec<ZygoteInfo>,
    /// Per import-cache tree node id: the cold starts its zygote served
    /// and those it could not.
    pub zygote_uses: Vec<(String, Uses)>,
}

pub(crate) struct Manager {
    sandboxes: Sandboxes,
    pool: Arc<MemoryPool>,
    warm: Mutex<Warm>,
    metrics: Arc<Metrics>,
    listeners: Listeners,
    pause_after: Duration,
    stop: CancellationToken,
    /// Told whenever a sandbox goes idle that a waiting call could use.
    parked: Notify,
    tree: Tree,
    teardowns: Arc<Semaphore>,
}

/// What the evictor destroys next.
enum Victim {
    Sandbox(Arc<SafeSandbox>),
    Zygote(Arc<Node>),
}

#[derive(Default)]
struct Warm {
    /// Idle and paused sandboxes per version; the most recently used last.
    idle: HashMap<Key, Vec<Arc<SafeSandbox>>>,
    /// The newest version seen per function.
    latest: HashMap<Arc<str>, u64>,
    /// Calls waiting for memory, per version.
    waiting: HashMap<Key, usize>,
}

/// Counts a call as waiting for a sandbox of `key` while it lives.
struct WaitingFor<'a> {
    manager: &'a Manager,
    key: &'a Key,
}

impl<'a> WaitingFor<'a> {
    fn new(manager: &'a Manager, key: &'a Key) -> Self {
        *manager.warm().waiting.entry(key.clone()).or_default() += 1;
        WaitingFor { manager, key }
    }
}

impl Drop for WaitingFor<'_> {
    fn drop(&mut self) {
        let mut warm = self.manager.warm();
        if let Some(n) = warm.waiting.get_mut(self.key) {
            *n -= 1;
            if *n == 0 {
                warm.waiting.remove(self.key);
            }
        }
    }
}

impl Warm {
    /// No newer version of the function has run here.
    fn is_latest(&self, key: &Key) -> bool {
        self.latest.get(&key.name).is_none_or(|v| *v <= key.version)
    }
}

/// Counters and the registry of live sandboxes, kept by listening.
#[derive(Default)]
struct Metrics {
    live: Mutex<HashMap<String, Arc<SafeSandbox>>>,
    evictions: AtomicU64,
    warm_starts: AtomicU64,
    cold_starts: AtomicU64,
    forks: AtomicU64,
}

impl Metrics {
    fn live(&self) -> MutexGuard<'_, HashMap<String, Arc<SafeSandbox>>> {
        // Single inserts and removes: a poisoned map is still consistent.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Listener for Metrics {
    fn on_event(&self, event: &Event<'_>) {
        if let EventKind::Destroyed(why) = event.kind {
            self.live().remove(event.sandbox);
            if why == Why::Evicted {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Lifecycle events at debug level.
struct LogEvents;

impl Listener for LogEvents {
    fn on_event(&self, event: &Event<'_>) {
        tracing::debug!(
            sandbox = event.sandbox,
            function = %event.key.name,
            version = event.key.version,
            event = ?event.kind,
            "sandbox lifecycle"
        );
    }
}

impl Manager {
    /// Prepares the sandboxes and starts the evictor and the free-memory
    /// watcher. Needs root and a tokio runtime.
    pub fn new(config: Config) -> Result<Arc<Manager>, StartError> {
        let pool_mb = match config.mem_pool_mb {
            0 => total_ram_mb()?.saturating_sub(HOST_RESERVE_MB),
            mb => mb,
        };
        let pause_after = Duration::from_millis(config.pause_after_ms);
        let min_free_mb = config.min_free_mb;
        let sandboxes = Sandboxes::new(config)?;
        let metrics = Arc::new(Metrics::default());
        let listeners: Listeners =
            Arc::new([metrics.clone() as Arc<dyn Listener>, Arc::new(LogEvents)]);
        let manager = Arc::new(Manager {
            sandboxes,
            pool: MemoryPool::new(pool_mb),
            warm: Mutex::new(Warm::default()),
            metrics,
            listeners,
            pause_after,
            stop: CancellationToken::new(),
            parked: Notify::new(),
            tree: Tree::default(),
            teardowns: Arc::new(Semaphore::new(TEARDOWNS_IN_FLIGHT)),
        });
        tokio::spawn(evictor(Arc::downgrade(&manager), manager.stop.clone()));
        tokio::spawn(sweeper(Arc::downgrade(&manager), manager.stop.clone()));
        if min_free_mb > 0 {
            tokio::spawn(memory_watcher(
                Arc::downgrade(&manager),
                manager.stop.clone(),
                min_free_mb,
            ));
        }
        tracing::info!(pool_mb, "memory pool ready");
        Ok(manager)
    }

    fn warm(&self) -> MutexGuard<'_, Warm> {
        // Every critical section is a few map operations; a poisoned lock
        // leaves them consistent.
        self.warm.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn cgroup_version(&self) -> u32 {
        self.sandboxes.cgroup_version()
    }

    /// The cache's data dir, absolute: the only place the dirs the cache
    /// names may be.
    pub fn cache_data_dir(&self) -> &Path {
        &self.sandboxes.shared.cache_data_dir
    }

    /// Runs one call: warm if an idle sandbox of its version exists, else
    /// `prepare` (only then) says what to create. Returns the version that
    /// ran and the outcome.
    pub async fn invoke<F, Fut>(&self, call: Call<'_>, prepare: F) -> Result<(u64, Outcome), Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Prepared, Error>>,
    {
        let deadline = Instant::now() + call.timeout;
        let key = Key {
            name: call.name.into(),
            version: call.version,
        };
        // One-call sandboxes are never parked, so there is no idle one of
        // such a function to look for.
        let idle = match call.one_call {
            true => None,
            false => self.take_idle(&key, deadline).await,
        };
        let lease = match idle {
            Some(lease) => {
                self.metrics.warm_starts.fetch_add(1, Ordering::Relaxed);
                lease
            }
            None => {
                let prepared = prepare().await?;
                let key = Key {
                    name: key.name,
                    version: prepared.version,
                };
                self.note_version(&key);
                match self.take_idle(&key, deadline).await {
                    Some(lease) => {
                        self.metrics.warm_starts.fetch_add(1, Ordering::Relaxed);
                        lease
                    }
                    None => {
                        self.cold(key, prepared.spec, prepared.chain, deadline)
                            .await?
                    }
                }
            }
        };
        let version = lease.safe().key().version;
        let outcome = self.run(lease, &call, deadline).await?;
        Ok((version, outcome))
    }

    /// Resolves with the next sandbox of `key` that goes idle, taken out
    /// of the idle list.
    async fn next_idle(&self, key: &Key) -> Arc<SafeSandbox> {
        loop {
            let parked = self.parked.notified();
            tokio::pin!(parked);
            // Registered before looking, so a park in between is not missed.
            parked.as_mut().enable();
            if let Some(candidate) = self.pop_idle(key) {
                return candidate;
            }
            parked.await;
        }
    }

    fn pop_idle(&self, key: &Key) -> Option<Arc<SafeSandbox>> {
        self.warm().idle.get_mut(key)?.pop()
    }

    /// Pops idle sandboxes of `key` until one can be leased.
    async fn take_idle(&self, key: &Key, deadline: Instant) -> Option<Lease> {
        while let Some(candidate) = self.pop_idle(key) {
            if let Some(lease) = self.lease(candidate, deadline).await {
                return Some(lease);
            }
        }
        None
    }

    /// Leases a sandbox taken out of the idle list, if its runtime still
    /// lives (one forked from a zygote dies with it). A paused one first
    /// gets its full memory limit back from the pool, waiting in line (the
    /// evictor makes room) until `deadline`; if it cannot, it is destroyed
    /// and the call starts cold, in line for memory like any cold start.
    async fn lease(&self, candidate: Arc<SafeSandbox>, deadline: Instant) -> Option<Lease> {
        let mut topup = None;
        loop {
            match candidate.lease(topup.take()) {
                Ok(mut lease) => {
                    if lease.sandbox().peer_closed() {
                        lease.safe().exited();
                        self.discard(lease, Why::CallFailed).await;
                        return None;
                    }
                    return Some(lease);
                }
                Err(Unleased::Gone) => return None,
                Err(Unleased::Short { kib }) => {
                    let more = self
                        .pool
                        .reserve_kib(kib, deadline)
                        .instrument(tracing::info_span!("memory_pool.thaw", kib))
                        .await;
                    match more {
                        Ok(more) => topup = Some(more),
                        Err(e) => {
                            tracing::warn!(sandbox = %candidate.id(), error = %e, "no memory to thaw a paused sandbox; destroying it");
                            destroy_in_background(vec![candidate], Why::Evicted);
                            return None;
                        }
                    }
                }
            }
        }
    }

    async fn cold(
        &self,
        key: Key,
        spec: SandboxSpec,
        chain: Option<Vec<ZygoteSpec>>,
        deadline: Instant,
    ) -> Result<Lease, Error> {
        let memory_mb = self.sandboxes.memory_mb(&spec.limits);
        // While waiting for memory, a sandbox of the same version that
        // goes idle serves this call better than a new one would.
        let waiting = WaitingFor::new(self, &key);
        let reservation = loop {
            let waited = async {
                tokio::select! {
                    reserved = self.pool.reserve(memory_mb, deadline) => Ok(reserved),
                    candidate = self.next_idle(&key) => Err(candidate),
                }
            }
            .instrument(tracing::info_span!("memory_pool.wait", memory_mb))
            .await;
            match waited {
                Ok(reserved) => break reserved?,
                Err(candidate) => {
                    if let Some(lease) = self.lease(candidate, deadline).await {
                        self.metrics.warm_starts.fetch_add(1, Ordering::Relaxed);
                        return Ok(lease);
                    }
                }
            }
        };
        drop(waiting);
        let sandbox = self.start(&key, spec, chain, deadline).await?;
        self.metrics.cold_starts.fetch_add(1, Ordering::Relaxed);
        let (safe, lease) = SafeSandbox::start(sandbox, key, reservation, self.listeners.clone());
        self.metrics.live().insert(safe.id().to_string(), safe);
        Ok(lease)
    }

    /// A sandbox forked from the chain's zygote, or else a fresh one.
    async fn start(
        &self,
        key: &Key,
        spec: SandboxSpec,
        chain: Option<Vec<ZygoteSpec>>,
        deadline: Instant,
    ) -> Result<Sandbox, Error> {
        if let Some(chain) = chain {
            // Making zygotes may take at most half of what is left, so a
            // fresh sandbox still has time when they are slow.
            let left = deadline.saturating_duration_since(Instant::now()) / 2;
            let zygote = chain.last().map(|n| n.id.clone()).unwrap_or_default();
            let forked = self
                .tree
                .fork(&self.sandboxes, &self.pool, &chain, spec.clone(), left)
                .instrument(tracing::info_span!("zygote.fork", function = %key.name, zygote))
                .await;
            match forked {
                Ok(sandbox) => {
                    self.metrics.forks.fetch_add(1, Ordering::Relaxed);
                    return Ok(sandbox);
                }
                Err(e) => {
                    tracing::warn!(function = %key.name, error = %e, "no zygote fork; starting a fresh sandbox");
                }
            }
        }
        self.sandboxes
            .create(spec)
            .instrument(
                tracing::info_span!("sandbox.create", function = %key.name, version = key.version),
            )
            .await
    }

    async fn run(
        &self,
        mut lease: Lease,
        call: &Call<'_>,
        deadline: Instant,
    ) -> Result<Outcome, Error> {
        let left = deadline.saturating_duration_since(Instant::now());
        let span = tracing::info_span!(
            "function.run",
            function = %call.name,
            version = lease.safe().key().version,
            call_id = %call.call_id,
            sandbox = %lease.safe().id()
        );
        let outcome = lease
            .sandbox()
            .invoke_within(call.call_id, call.payload, call.http, left, call.timeout)
            .instrument(span)
            .await;
        let reusable = match &outcome {
            Ok(Outcome::Result(_) | Outcome::Http(_)) => true,
            Ok(Outcome::Error(e)) => match e.kind() {
                ErrorKind::Function | ErrorKind::InvalidRequest | ErrorKind::CannotStart => true,
                ErrorKind::Killed | ErrorKind::OutOfMemory => {
                    lease.safe().exited();
                    false
                }
                _ => false,
            },
            Err(_) => false,
        };
        let safe = lease.safe().clone();
        if reusable && !call.one_call && self.is_latest(safe.key()) {
            if let Some(epoch) = lease.keep() {
                self.park(safe, epoch);
            }
        } else {
            let why = match (reusable, call.one_call) {
                (false, _) => Why::CallFailed,
                (true, true) => Why::OneCall,
                (true, false) => Why::Retired,
            };
            self.discard(lease, why).await;
        }
        outcome
    }

    /// Tears a leased sandbox down after its call, off the call's path:
    /// waits only when [`TEARDOWNS_IN_FLIGHT`] are already running.
    async fn discard(&self, lease: Lease, why: Why) {
        let permit = self
            .teardowns
            .clone()
            .acquire_owned()
            .await
            .expect("the teardown semaphore is never closed");
        tokio::task::spawn_blocking(move || {
            lease.discard(why);
            drop(permit);
        });
    }

    fn is_latest(&self, key: &Key) -> bool {
        self.warm().is_latest(key)
    }

    /// Puts an idle sandbox where calls find it and schedules its pause.
    fn park(&self, safe: Arc<SafeSandbox>, epoch: u64) {
        let waiters = {
            let mut warm = self.warm();
            if !warm.is_latest(safe.key()) {
                drop(warm);
                destroy_in_background(vec![safe], Why::Retired);
                return;
            }
            warm.idle
                .entry(safe.key().clone())
                .or_default()
                .push(safe.clone());
            warm.waiting.get(safe.key()).copied().unwrap_or(0)
        };
        if waiters > 0 {
            self.parked.notify_waiters();
        } else {
            // A call of another function may need this one's memory.
            self.pool.nudge();
        }
        let pause_after = self.pause_after;
        tokio::spawn(async move {
            tokio::time::sleep(pause_after).await;
            let _ = tokio::task::spawn_blocking(move || safe.pause(epoch)).await;
        });
    }

    /// Records `key` as a version that runs; if it is the newest yet, the
    /// idle sandboxes of older versions are retired.
    fn note_version(&self, key: &Key) {
        let retired: Vec<Arc<SafeSandbox>> = {
            let mut warm = self.warm();
            let latest = warm.latest.entry(key.name.clone()).or_insert(key.version);
            if *latest > key.version {
                return;
            }
            *latest = key.version;
            let old: Vec<Key> = warm
                .idle
                .keys()
                .filter(|k| k.name == key.name && k.version < key.version)
                .cloned()
                .collect();
            old.iter()
                .filter_map(|k| warm.idle.remove(k))
                .flatten()
                .collect()
        };
        if !retired.is_empty() {
            tracing::info!(function = %key.name, version = key.version, retired = retired.len(), "retiring sandboxes of older versions");
            destroy_in_background(retired, Why::Retired);
        }
    }

    /// Takes what to evict next: paused sandboxes first, then idle ones
    /// and childless zygotes, least recently used first, a zygote before a
    /// sandbox of the same age. Never a zygote with live children: its
    /// children live in its pid namespace and would die with it.
    fn pick_victim(&self) -> Option<Victim> {
        let zygote = self.tree.eviction_candidate();
        let mut warm = self.warm();
        let sandbox = warm
            .idle
            .iter()
            .flat_map(|(key, list)| list.iter().enumerate().map(move |(i, s)| (key, i, s)))
            .map(|(key, i, s)| ((s.phase() != Phase::Paused, s.last_used(), true), key, i))
            .min_by_key(|(order, _, _)| *order);
        let zygote_first = match (&sandbox, &zygote) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some((order, _, _)), Some((_, at))) => (true, *at, false) < *order,
        };
        if zygote_first {
            return zygote.map(|(node, _)| Victim::Zygote(node));
        }
        let (_, key, index) = sandbox?;
        let key = key.clone();
        let list = warm.idle.get_mut(&key).expect("key just seen");
        let victim = list.remove(index);
        if list.is_empty() {
            warm.idle.remove(&key);
        }
        Some(Victim::Sandbox(victim))
    }

    /// Evicts one sandbox or zygote; false when none can be.
    async fn evict_one(&self) -> bool {
        match self.pick_victim() {
            None => false,
            Some(Victim::Sandbox(victim)) => {
                tracing::info!(sandbox = victim.id(), function = %victim.key().name, "evicting sandbox");
                let _ = tokio::task::spawn_blocking(move || victim.destroy(Why::Evicted)).await;
                true
            }
            Some(Victim::Zygote(node)) => {
                // A zygote that forked meanwhile is kept; the next pick
                // sees its child.
                if self.tree.evict(&node).await {
                    self.metrics.evictions.fetch_add(1, Ordering::Relaxed);
                }
                true
            }
        }
    }

    /// Builds a package's sdist for `function`'s cold start (see
    /// [`crate::build`]).
    pub(crate) async fn build(
        &self,
        function: &str,
        build: sock_proto::v1::SourceBuild,
    ) -> Result<sock_proto::v1::BuiltWheel, Error> {
        crate::build::build(&self.sandboxes, &self.pool, function, build).await
    }

    /// The zygote tree's nodes as this node knows them (see
    /// [`Tree::report`]).
    pub fn tree_report(&self) -> Vec<NodeReport> {
        self.tree.report()
    }

    pub fn status(&self) -> NodeStatus {
        let live: Vec<Arc<SafeSandbox>> = self.metrics.live().values().cloned().collect();
        let mut status = NodeStatus {
            evictions: self.metrics.evictions.load(Ordering::Relaxed),
            warm_starts: self.metrics.warm_starts.load(Ordering::Relaxed),
            cold_starts: self.metrics.cold_starts.load(Ordering::Relaxed),
            spare_cgroups: self.sandboxes.spare_cgroups(),
            spare_netns: self.sandboxes.spare_netns(),
            forks: self.metrics.forks.load(Ordering::Relaxed),
            zygote_start_failures: self.tree.start_failures(),
            zygotes: self.tree.status(),
            zygote_uses: self.tree.uses(),
            ..NodeStatus::default()
        };
        let mut functions: HashMap<Key, [u32; 3]> = HashMap::new();
        for sandbox in live {
            let slot = match sandbox.phase() {
                Phase::Idle => {
                    status.idle += 1;
                    0
                }
                Phase::Paused => {
                    status.paused += 1;
                    1
                }
                Phase::Running => {
                    status.running += 1;
                    2
                }
                Phase::Destroyed => continue,
            };
            status.used_bytes += sandbox.memory_usage();
            functions.entry(sandbox.key().clone()).or_default()[slot] += 1;
        }
        status.functions = functions.into_iter().collect();
        // After the phases: a sandbox's reservation changes before its
        // phase does (shrunk, then Paused; grown back, then Running), so a
        // sandbox counted paused here has its shrunk reservation counted,
        // not one from before its pause.
        status.pool = self.pool.snapshot();
        status
            .functions
            .sort_by(|(a, _), (b, _)| (&a.name, a.version).cmp(&(&b.name, b.version)));
        status
    }

    /// Destroys every sandbox: idle and paused ones here, running ones by
    /// killing their processes (their calls then end as KILLED).
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let idle: Vec<Arc<SafeSandbox>> = {
            let mut warm = self.warm();
            warm.idle.drain().flat_map(|(_, list)| list).collect()
        };
        let _ = tokio::task::spawn_blocking(move || destroy_all(&idle, Why::Shutdown)).await;
        self.sandboxes.destroy_all().await;
        self.tree.shutdown().await;
        // The killed sandboxes' owners tear them down as their calls end;
        // a process that exits first would leave their cgroups behind.
        let deadline = Instant::now() + TEARDOWN_WAIT;
        while self.sandboxes.alive() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.sandboxes.alive() > 0 {
            tracing::warn!(
                sandboxes = self.sandboxes.alive(),
                "sandboxes still being torn down at shutdown"
            );
        }
        let sandboxes = self.sandboxes.clone();
        let _ = tokio::task::spawn_blocking(move || sandboxes.close()).await;
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop.cancel();
        let idle: Vec<Arc<SafeSandbox>> = {
            let mut warm = self.warm();
            warm.idle.drain().flat_map(|(_, list)| list).collect()
        };
        destroy_all(&idle, Why::Shutdown);
    }
}

fn destroy_in_background(sandboxes: Vec<Arc<SafeSandbox>>, why: Why) {
    tokio::task::spawn_blocking(move || destroy_all(&sandboxes, why));
}

/// Destroys `sandboxes`, on up to [`TEARDOWN_THREADS`] threads at once: a
/// teardown mostly waits (for the kernel to kill, reap and drain a
/// cgroup), and at shutdown thousands of paused sandboxes must be gone
/// within the grace `sock up` and compose give (one at a time, 2,500 took
/// 15.6 s).
fn destroy_all(sandboxes: &[Arc<SafeSandbox>], why: Why) {
    let next = AtomicUsize::new(0);
    let work = || {
        while let Some(sandbox) = sandboxes.get(next.fetch_add(1, Ordering::Relaxed)) {
            sandbox.destroy(why);
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..TEARDOWN_THREADS.min(sandboxes.len()) {
            scope.spawn(work);
        }
        work();
    });
}

/// Frees memory whenever a reservation is waiting for more than is free.
async fn evictor(manager: Weak<Manager>, stop: CancellationToken) {
    let Some(pool) = manager.upgrade().map(|m| m.pool.clone()) else {
        return;
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = pool.pressure() => {}
        }
        while pool.shortfall_kib() > 0 {
            let Some(manager) = manager.upgrade() else {
                return;
            };
            if !manager.evict_one().await {
                break;
            }
        }
    }
}

/// Destroys the idle and paused sandboxes whose runtime died while they
/// waited (killed from outside, or with their zygote), so that neither
/// Status nor the pool counts them until a call or the evictor finds them.
async fn sweeper(manager: Weak<Manager>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_PERIOD);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(manager) = manager.upgrade() else {
            return;
        };
        // Checked outside the lock calls take (a syscall per sandbox).
        let waiting: Vec<Arc<SafeSandbox>> =
            manager.warm().idle.values().flatten().cloned().collect();
        let dead: Vec<Arc<SafeSandbox>> = waiting
            .into_iter()
            .filter(|s| s.dead_while_waiting())
            .collect();
        if dead.is_empty() {
            continue;
        }
        // Only those still waiting: a call may have taken one meanwhile,
        // and finds it dead itself.
        let dead: Vec<Arc<SafeSandbox>> = {
            let mut warm = manager.warm();
            let mut removed = Vec::new();
            for list in warm.idle.values_mut() {
                list.retain(|s| {
                    let gone = dead.iter().any(|d| Arc::ptr_eq(d, s));
                    if gone {
                        removed.push(s.clone());
                    }
                    !gone
                });
            }
            removed
        };
        if !dead.is_empty() {
            tracing::warn!(
                sandboxes = dead.len(),
                "idle or paused sandboxes whose runtime died; destroying them"
            );
            dead.iter().for_each(|s| s.exited());
            destroy_in_background(dead, Why::Died);
        }
    }
}

/// Evicts idle sandboxes while the machine's available memory is low.
async fn memory_watcher(manager: Weak<Manager>, stop: CancellationToken, min_free_mb: u64) {
    let mut tick = tokio::time::interval(MEMINFO_PERIOD);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        while available_mb().is_some_and(|mb| mb < min_free_mb) {
            let Some(manager) = manager.upgrade() else {
                return;
            };
            if !manager.evict_one().await {
                break;
            }
        }
    }
}

fn meminfo_mb(field: &str) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_kb(&info, field).map(|kb| kb / 1024)
}

fn parse_meminfo_kb(info: &str, field: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

fn available_mb() -> Option<u64> {
    meminfo_mb("MemAvailable")
}

fn total_ram_mb() -> Result<u64, StartError> {
    meminfo_mb("MemTotal").ok_or_else(|| {
        StartError::InvalidConfig("cannot read MemTotal from /proc/meminfo; set mem_pool_mb".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_are_read_in_kb() {
        let info =
            "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:    2048000 kB\n";
        assert_eq!(parse_meminfo_kb(info, "MemTotal"), Some(24_576_000));
        assert_eq!(parse_meminfo_kb(info, "MemAvailable"), Some(2_048_000));
        assert_eq!(parse_meminfo_kb(info, "Mem"), None);
        assert_eq!(parse_meminfo_kb(info, "SwapTotal"), None);
    }
}
