//! The node's live zygotes, one per import-cache tree node, made lazily
//! (parent first) when a cold start needs them, each holding its memory
//! from the pool while it lives.
//!
//! Creating one node waits only for that node's own slot: cold starts
//! served by other zygotes go on. A zygote found dead (its process is gone)
//! is replaced on the next need. One that fails to start (an import
//! raised, it ran out of time) is logged once with its reason and not
//! tried again until its back-off has passed; meanwhile, and when a zygote
//! is still starting, cold starts fork from the deepest ancestor that
//! lives (their own imports then happen in the child). Only when not even
//! the root zygote works is a cold start a fresh sandbox; a fork that
//! fails is tried again from each ancestor that lives, deepest first.
//!
//! With `import_cache = "tree"` (the default) a cold start forks from the
//! last zygote of `Prepare`'s `zygote_chain` (an empty chain: the root
//! zygote, which imported only the runtime); with `"off"` it is always a
//! fresh sandbox. Each zygote is made by a task of its own (imports may
//! take up to 120 s), each child zygote forked from its parent; a cold
//! start waits for it at most half its remaining time. A zygote that
//! cannot be made right now (no `zygote_memory_mb` free in the pool:
//! zygotes never wait for memory) is passed over like one still starting.
//! A failed start (an import raised: the zygote sends an `error` frame
//! naming the module and exception before it exits; or no `ready` in
//! time) is counted (`zygote_start_failures`) and logged once with its
//! reason, and the node is not tried again for `zygote_retry_ms` (5 s),
//! doubled for each failure in a row up to 64×; a start that works resets
//! it.
//!
//! Per node id, the tree counts the cold starts its zygote served (hits)
//! and those whose chain ended there that it could not (misses), across
//! the zygotes that come and go for the id (`sock tree`, the metrics).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::pool::{MemoryPool, Reservation};
use crate::sandbox::Sandbox;
use crate::sandboxes::Sandboxes;
use crate::spec::SandboxSpec;
use crate::zygote::{Zygote, ZygoteSpec};

/// A live zygote and the memory it holds from the pool.
pub(crate) struct Node {
    // Field order: the zygote is torn down before its memory goes back.
    pub zygote: Zygote,
    reservation: Mutex<Option<Reservation>>,
}

impl Node {
    /// Kills the zygote, then gives its memory back.
    async fn destroy(&self) {
        self.zygote.destroy().await;
        self.reservation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Node>>>>;

/// How long a zygote may take to import its packages.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest back-off, as a multiple of the first.
const MAX_BACKOFF_FACTOR: u32 = 64;

/// Nodes whose zygote failed to start, and how many starts failed.
#[derive(Default)]
struct Failures {
    /// Per node id: failures in a row, and when the next start may be tried.
    nodes: Mutex<HashMap<String, (u32, Instant)>>,
    total: AtomicU64,
}

impl Failures {
    /// Whether `id` failed lately and must not be tried before `now` is
    /// past its back-off.
    fn backing_off(&self, id: &str, now: Instant) -> bool {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_some_and(|(_, until)| now < *until)
    }

    /// Counts a failed start of `id`; returns how long it now backs off:
    /// `first`, doubled for each failure in a row, at most 64 times `first`.
    fn failed(&self, id: &str, first: Duration, now: Instant) -> Duration {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let (in_a_row, until) = nodes.entry(id.to_string()).or_insert((0, now));
        *in_a_row = in_a_row.saturating_add(1);
        let factor = 1u32
            .checked_shl(*in_a_row - 1)
            .unwrap_or(u32::MAX)
            .min(MAX_BACKOFF_FACTOR);
        let wait = first.saturating_mul(factor);
        *until = now + wait;
        wait
    }

    /// A start of `id` worked: a later failure backs off from the start.
    fn started(&self, id: &str) {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Makes the zygote of `spec` in `slot` (unless another call made it
/// meanwhile, or its last start failed within its back-off), forked from
/// `parent`, or a root zygote without one.
async fn make(
    slot: Slot,
    sandboxes: Sandboxes,
    pool: Arc<MemoryPool>,
    spec: ZygoteSpec,
    parent: Option<Arc<Node>>,
    failures: Arc<Failures>,
) -> Result<Arc<Node>, Error> {
    let mut held = slot.lock_owned().await;
    if let Some(node) = held.as_ref().filter(|n| n.zygote.is_alive()) {
        return Ok(node.clone());
    }
    if let Some(dead) = held.take() {
        dead.destroy().await;
    }
    // Calls that queued on the slot behind a start that failed do not
    // try again each.
    if failures.backing_off(&spec.id, Instant::now()) {
        return Err(Error::Zygote {
            id: spec.id.clone(),
            why: "its last start failed; not tried again yet".into(),
        });
    }
    let memory_mb = sandboxes.zygote_memory_mb();
    let reservation = pool.try_reserve(memory_mb).ok_or_else(|| Error::Zygote {
        id: spec.id.clone(),
        why: format!("no {memory_mb} MB free in the memory pool"),
    })?;
    let started = match &parent {
        None => sandboxes.create_zygote(&spec, START_TIMEOUT).await,
        Some(parent) => parent.zygote.fork_zygote(&spec, START_TIMEOUT).await,
    };
    let zygote = match started {
        Ok(zygote) => zygote,
        Err(error) => {
            let retry_in = failures.failed(&spec.id, sandboxes.zygote_retry(), Instant::now());
            tracing::warn!(zygote = %spec.id, %error, ?retry_in, "zygote failed to start; cold starts fork from its nearest working ancestor until it is tried again");
            return Err(error);
        }
    };
    failures.started(&spec.id);
    tracing::info!(zygote = %spec.id, imports = ?spec.imports, "zygote started");
    let node = Arc::new(Node {
        zygote,
        reservation: Mutex::new(Some(reservation)),
    });
    *held = Some(node.clone());
    park_spare(node.clone());
    Ok(node)
}

/// Has `node`'s zygote fork its next child ahead of need, in the
/// background.
fn park_spare(node: Arc<Node>) {
    tokio::spawn(async move {
        if let Err(e) = node.zygote.park_spare().await {
            tracing::debug!(zygote = node.zygote.id(), error = %e, "no spare child parked");
        }
    });
}

/// What cold starts did with one node: forked from its zygote (hits,
/// also those whose chain went deeper and fell back to it), or ended
/// their chain there and were served by an ancestor's zygote or a fresh
/// sandbox because its zygote could not serve (misses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Uses {
    pub hits: u64,
    pub misses: u64,
}

/// Node ids whose uses are kept. Ids come from the cache's trees, which
/// are small, but a rebuilt tree brings new ones: past this many, the
/// least recently used id goes, so neither the map nor the metrics
/// labelled by id grow without bound.
const MAX_COUNTED_IDS: usize = 1024;

/// [`Uses`] per node id, kept across the zygotes that come and go for it.
#[derive(Default)]
struct Counters(Mutex<HashMap<String, (Uses, Instant)>>);

impl Counters {
    fn count(&self, id: &str, now: Instant, add: impl FnOnce(&mut Uses)) {
        let mut ids = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !ids.contains_key(id) && ids.len() >= MAX_COUNTED_IDS {
            let oldest = ids
                .iter()
                .min_by_key(|(_, (_, last))| *last)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                ids.remove(&oldest);
            }
        }
        let (uses, last) = ids.entry(id.to_string()).or_insert((Uses::default(), now));
        add(uses);
        *last = now;
    }

    fn hit(&self, id: &str, now: Instant) {
        self.count(id, now, |uses| uses.hits += 1);
    }

    fn miss(&self, id: &str, now: Instant) {
        self.count(id, now, |uses| uses.misses += 1);
    }

    /// Every counted id's uses, by id.
    fn all(&self) -> Vec<(String, Uses)> {
        let mut all: Vec<(String, Uses)> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, (uses, _))| (id.clone(), *uses))
            .collect();
        all.sort_by(|(a, _), (b, _)| a.cmp(b));
        all
    }
}

/// What the Tree RPC shows of one node id this sandboxd knows: what cold
/// starts did with it, and its zygote if one lives.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NodeReport {
    pub id: String,
    pub uses: Uses,
    pub zygote: Option<LiveZygote>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LiveZygote {
    pub pss_kb: u64,
    /// When it last forked (or started).
    pub last_fork: Instant,
}

/// What Status shows of one zygote.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ZygoteInfo {
    pub id: String,
    pub children: u32,
    pub memory_bytes: u64,
    pub reserved_mb: u64,
    pub parked: u32,
}

#[derive(Default)]
pub(crate) struct Tree {
    slots: Mutex<HashMap<String, Slot>>,
    /// Shared with the tasks that make zygotes: they outlive a call.
    failures: Arc<Failures>,
    uses: Counters,
}

impl Tree {
    fn slot(&self, id: &str) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// The live nodes right now.
    fn nodes(&self) -> Vec<Arc<Node>> {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .filter_map(|slot| slot.try_lock().ok().and_then(|node| node.clone()))
            .collect()
    }

    /// Forks a sandbox for `spec` from the last zygote of `chain` (root
    /// first), making whatever zygotes of the chain do not live yet, or
    /// from the deepest one that lives when a deeper one cannot serve.
    pub async fn fork(
        &self,
        sandboxes: &Sandboxes,
        pool: &Arc<MemoryPool>,
        chain: &[ZygoteSpec],
        spec: SandboxSpec,
        timeout: Duration,
    ) -> Result<Sandbox, Error> {
        let forked = self
            .fork_deepest(sandboxes, pool, chain, spec, timeout)
            .await;
        let now = Instant::now();
        let served_by = forked.as_ref().ok().map(|(_, id)| id.as_str());
        if let Some(id) = served_by {
            self.uses.hit(id, now);
        }
        // Served by an ancestor's zygote, or (failed here) by a fresh
        // sandbox: the node the chain ended at missed.
        if let Some(wanted) = chain.last().filter(|n| served_by != Some(n.id.as_str())) {
            self.uses.miss(&wanted.id, now);
        }
        forked.map(|(sandbox, _)| sandbox)
    }

    /// [`fork`](Self::fork), saying which zygote the sandbox came from.
    async fn fork_deepest(
        &self,
        sandboxes: &Sandboxes,
        pool: &Arc<MemoryPool>,
        chain: &[ZygoteSpec],
        spec: SandboxSpec,
        timeout: Duration,
    ) -> Result<(Sandbox, String), Error> {
        let node = self.zygote_for(sandboxes, pool, chain, timeout).await?;
        let mut forked = self.fork_from(&node, spec.clone()).await;
        // A fork that failed (the zygote died under it, no cgroup or root
        // could be made for the child): the ancestors that live, deepest
        // first, before the caller falls back to a fresh sandbox.
        let depth = chain
            .iter()
            .position(|n| n.id == node.zygote.id())
            .unwrap_or(0);
        for ancestor in chain[..depth].iter().rev() {
            let Err(error) = &forked else { break };
            let live = self
                .slot(&ancestor.id)
                .lock()
                .await
                .clone()
                .filter(|n| n.zygote.is_alive());
            if let Some(ancestor) = live {
                tracing::warn!(zygote = node.zygote.id(), ancestor = ancestor.zygote.id(), %error, "fork failed; forking from an ancestor");
                forked = self.fork_from(&ancestor, spec.clone()).await;
            }
        }
        forked
    }

    /// Forks from `node`, saying which zygote the sandbox came from; a
    /// zygote found dead is taken out of the tree.
    async fn fork_from(
        &self,
        node: &Arc<Node>,
        spec: SandboxSpec,
    ) -> Result<(Sandbox, String), Error> {
        let forked = node.zygote.fork(spec).await;
        match &forked {
            Ok(_) => park_spare(node.clone()),
            Err(_) if !node.zygote.is_alive() => self.remove(node).await,
            Err(_) => {}
        }
        forked.map(|sandbox| (sandbox, node.zygote.id().to_string()))
    }

    async fn zygote_for(
        &self,
        sandboxes: &Sandboxes,
        pool: &Arc<MemoryPool>,
        chain: &[ZygoteSpec],
        timeout: Duration,
    ) -> Result<Arc<Node>, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut parent: Option<Arc<Node>> = None;
        for spec in chain {
            let slot = self.slot(&spec.id);
            let live = slot.lock().await.clone().filter(|n| n.zygote.is_alive());
            if let Some(node) = live {
                parent = Some(node);
                continue;
            }
            let made = if self.failures.backing_off(&spec.id, Instant::now()) {
                Err(Error::Zygote {
                    id: spec.id.clone(),
                    why: "its last start failed; not tried again yet".into(),
                })
            } else {
                // Made by a task of its own: a call that cannot wait for a
                // slow import goes on, and the zygote is there for later
                // calls.
                let making = tokio::spawn(make(
                    slot,
                    sandboxes.clone(),
                    pool.clone(),
                    spec.clone(),
                    parent.clone(),
                    self.failures.clone(),
                ));
                match tokio::time::timeout_at(deadline, making).await {
                    Ok(Ok(made)) => made,
                    Ok(Err(e)) => Err(Error::Zygote {
                        id: spec.id.clone(),
                        why: e.to_string(),
                    }),
                    Err(_) => Err(Error::Zygote {
                        id: spec.id.clone(),
                        why: "still starting when the call had to go on".into(),
                    }),
                }
            };
            match (made, &parent) {
                (Ok(node), _) => parent = Some(node),
                // The deepest zygote that lives serves: the child imports
                // what the missing ones would have itself.
                (Err(e), Some(ancestor)) => {
                    tracing::debug!(zygote = %spec.id, ancestor = ancestor.zygote.id(), error = %e, "forking from an ancestor");
                    break;
                }
                (Err(e), None) => return Err(e),
            }
        }
        parent.ok_or_else(|| Error::InvalidRequest("the zygote chain is empty".into()))
    }

    /// Takes `node` out of the tree (if it is still there) and destroys it.
    async fn remove(&self, node: &Arc<Node>) {
        let slot = self.slot(node.zygote.id());
        {
            let mut held = slot.lock().await;
            if held.as_ref().is_some_and(|n| Arc::ptr_eq(n, node)) {
                held.take();
            }
        }
        node.destroy().await;
    }

    /// The childless zygote forked from least recently, with that time:
    /// the one to evict first.
    pub fn eviction_candidate(&self) -> Option<(Arc<Node>, Instant)> {
        self.nodes()
            .into_iter()
            .filter(|n| n.zygote.children() == 0)
            .map(|n| {
                let at = n.zygote.last_fork();
                (n, at)
            })
            .min_by_key(|(_, at)| *at)
    }

    /// Evicts `node` unless a fork gave it a child since it was picked;
    /// false then.
    pub async fn evict(&self, node: &Arc<Node>) -> bool {
        if !node.zygote.retire() {
            return false;
        }
        tracing::info!(zygote = node.zygote.id(), "evicting zygote");
        self.remove(node).await;
        true
    }

    /// Zygote starts that failed since sandboxd started.
    pub fn start_failures(&self) -> u64 {
        self.failures.total.load(Ordering::Relaxed)
    }

    /// Cold starts per node id, by id.
    pub fn uses(&self) -> Vec<(String, Uses)> {
        self.uses.all()
    }

    /// Every node id with counted uses or a live zygote, by id. Reads each
    /// live zygote's PSS from `/proc`: call it off the async threads.
    pub fn report(&self) -> Vec<NodeReport> {
        let mut reports: HashMap<String, NodeReport> = self
            .uses
            .all()
            .into_iter()
            .map(|(id, uses)| {
                let report = NodeReport {
                    id: id.clone(),
                    uses,
                    zygote: None,
                };
                (id, report)
            })
            .collect();
        for node in self.nodes().iter().filter(|n| n.zygote.is_alive()) {
            let id = node.zygote.id();
            let report = reports.entry(id.to_string()).or_insert_with(|| NodeReport {
                id: id.to_string(),
                uses: Uses::default(),
                zygote: None,
            });
            report.zygote = Some(LiveZygote {
                pss_kb: node.zygote.pss_kb(),
                last_fork: node.zygote.last_fork(),
            });
        }
        let mut reports: Vec<NodeReport> = reports.into_values().collect();
        reports.sort_by(|a, b| a.id.cmp(&b.id));
        reports
    }

    pub fn status(&self) -> Vec<ZygoteInfo> {
        let mut zygotes: Vec<ZygoteInfo> = self
            .nodes()
            .iter()
            .map(|n| ZygoteInfo {
                id: n.zygote.id().to_string(),
                children: u32::try_from(n.zygote.children()).unwrap_or(u32::MAX),
                memory_bytes: n.zygote.memory_usage(),
                reserved_mb: n.zygote.memory_mb(),
                parked: u32::try_from(n.zygote.parked()).unwrap_or(u32::MAX),
            })
            .collect();
        zygotes.sort_by(|a, b| a.id.cmp(&b.id));
        zygotes
    }

    /// Destroys every zygote, children first.
    pub async fn shutdown(&self) {
        let mut nodes = self.nodes();
        // Deeper ids are children ("root/a" under "root").
        nodes.sort_by_key(|n| std::cmp::Reverse(n.zygote.id().len()));
        for node in nodes {
            self.remove(&node).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_start_backs_off_doubling_up_to_a_cap_and_a_start_resets_it() {
        let failures = Failures::default();
        let first = Duration::from_secs(5);
        let now = Instant::now();
        assert!(!failures.backing_off("root/a==1", now));
        assert_eq!(failures.failed("root/a==1", first, now), first);
        assert!(failures.backing_off("root/a==1", now + first / 2));
        assert!(!failures.backing_off("root/a==1", now + first));
        assert!(!failures.backing_off("root/b==1", now), "other nodes go on");
        assert_eq!(failures.failed("root/a==1", first, now), first * 2);
        assert_eq!(failures.failed("root/a==1", first, now), first * 4);
        for _ in 0..40 {
            failures.failed("root/a==1", first, now);
        }
        assert_eq!(failures.failed("root/a==1", first, now), first * 64);
        assert_eq!(failures.total.load(Ordering::Relaxed), 44);
        failures.started("root/a==1");
        assert!(!failures.backing_off("root/a==1", now));
        assert_eq!(failures.failed("root/a==1", first, now), first);
    }

    #[test]
    fn uses_are_counted_per_id_and_the_least_recently_used_id_goes_past_the_cap() {
        let counters = Counters::default();
        let start = Instant::now();
        counters.hit("root", start);
        counters.hit("root", start);
        counters.miss("root/a==1", start);
        assert_eq!(
            counters.all(),
            [
                ("root".to_string(), Uses { hits: 2, misses: 0 }),
                ("root/a==1".to_string(), Uses { hits: 0, misses: 1 }),
            ]
        );
        for i in 0..MAX_COUNTED_IDS {
            let at = start + Duration::from_millis(1 + i as u64);
            counters.hit(&format!("root/n{i}==1"), at);
            // "root" stays in use; "root/a==1" is used no more.
            counters.hit("root", at);
        }
        let all = counters.all();
        assert_eq!(all.len(), MAX_COUNTED_IDS);
        assert!(all.iter().all(|(id, _)| id != "root/a==1"), "{all:?}");
        assert!(all.iter().any(|(id, _)| id == "root"));
        assert!(
            all.iter().all(|(id, _)| id != "root/n0==1"),
            "next oldest went too"
        );
    }
}
