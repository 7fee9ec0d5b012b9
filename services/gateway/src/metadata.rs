//! Each function's current version and config, as the registry last
//! described it.
//!
//! A description is served from memory for `ttl` before the registry is
//! asked again, or until `watch` drops it because the registry announced a
//! change. Callers that miss at the same time share one registry call.
//! When the registry cannot be reached, the last description keeps being
//! served (and the registry is asked again after another `ttl`), so a
//! registry outage does not stop calls to functions already known.
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sock_proto::v1::registry_client::RegistryClient;
use sock_proto::v1::{FunctionInfo, GetFunctionRequest};
use sock_service::AuthedChannel;
use tokio::time::Instant;
use tonic::{Code, Status};
use tracing::Instrument;

use crate::error::{Error, reason};

/// Where descriptions come from: the registry, or a fake in unit tests.
pub(crate) trait FunctionSource: Send + Sync {
    fn fetch(&self, name: &str) -> impl Future<Output = Result<FunctionInfo, Status>> + Send;
}

impl FunctionSource for RegistryClient<AuthedChannel> {
    async fn fetch(&self, name: &str) -> Result<FunctionInfo, Status> {
        let request = GetFunctionRequest {
            name: name.to_string(),
        };
        self.clone()
            .get_function(request)
            .instrument(tracing::info_span!(
                "registry.get_function",
                otel.kind = "client"
            ))
            .await
            .map(tonic::Response::into_inner)
    }
}

pub(crate) struct MetadataCache<S> {
    source: S,
    ttl: Duration,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// One function's entry. `refresh` is held while its registry call runs,
/// so concurrent misses queue behind one call instead of making their own.
#[derive(Default)]
struct Slot {
    refresh: tokio::sync::Mutex<()>,
    last: Mutex<Option<Fetch>>,
}

/// The outcome of the latest registry call for a function.
#[derive(Clone)]
struct Fetch {
    at: Instant,
    outcome: Outcome,
}

#[derive(Clone)]
enum Outcome {
    /// Found now, or earlier and the registry could not be asked since.
    Known(Arc<FunctionInfo>),
    Missing,
    Unreachable(String),
}

impl<S: FunctionSource> MetadataCache<S> {
    pub fn new(source: S, ttl: Duration) -> Self {
        MetadataCache {
            source,
            ttl,
            slots: Mutex::default(),
        }
    }

    /// The description of function `name` (a valid name).
    pub async fn get(&self, name: &str) -> Result<Arc<FunctionInfo>, Error> {
        let slot = self.slot(name);
        if let Some(info) = slot.fresh(self.ttl) {
            return Ok(info);
        }
        let asked = Instant::now();
        let _refreshing = slot.refresh.lock().await;
        // Whoever held the lock before us may have just asked the registry.
        if let Some(fetch) = slot.last().filter(|f| f.at >= asked) {
            return fetch.outcome.into_result(name);
        }
        if let Some(info) = slot.fresh(self.ttl) {
            return Ok(info);
        }

        let outcome = match self.source.fetch(name).await {
            Ok(info) => Outcome::Known(Arc::new(info)),
            Err(status) if status.code() == Code::NotFound => Outcome::Missing,
            Err(status) => match slot.last().map(|f| f.outcome) {
                Some(Outcome::Known(info)) => {
                    tracing::warn!(
                        function = name,
                        version = info.version,
                        error = %reason(&status),
                        "registry unavailable; serving the last known version"
                    );
                    Outcome::Known(info)
                }
                _ => Outcome::Unreachable(reason(&status)),
            },
        };
        slot.set(Fetch {
            at: Instant::now(),
            outcome: outcome.clone(),
        });
        if !matches!(outcome, Outcome::Known(_)) {
            self.forget(name, &slot);
        }
        outcome.into_result(name)
    }

    /// Drops what is known of `name`, so its next call asks the registry:
    /// after a push or delete through this gateway, the entry is stale.
    /// Callers already waiting on the old entry still get its outcome.
    pub fn invalidate(&self, name: &str) {
        self.slots.lock().expect("metadata cache lock").remove(name);
    }

    /// Drops what is known of every function, as `invalidate` does one.
    pub fn clear(&self) {
        self.slots.lock().expect("metadata cache lock").clear();
    }

    fn slot(&self, name: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().expect("metadata cache lock");
        Arc::clone(slots.entry(name.to_string()).or_default())
    }

    /// Drops the entry of a function that is not there, so names nobody
    /// pushed do not pile up. Callers already waiting on `slot` still get
    /// its outcome; later ones start a new entry.
    fn forget(&self, name: &str, slot: &Arc<Slot>) {
        let mut slots = self.slots.lock().expect("metadata cache lock");
        if slots.get(name).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(name);
        }
    }
}

impl Slot {
    fn last(&self) -> Option<Fetch> {
        self.last.lock().expect("metadata slot lock").clone()
    }

    fn set(&self, fetch: Fetch) {
        *self.last.lock().expect("metadata slot lock") = Some(fetch);
    }

    fn fresh(&self, ttl: Duration) -> Option<Arc<FunctionInfo>> {
        match self.last()? {
            Fetch {
                at,
                outcome: Outcome::Known(info),
            } if at.elapsed() < ttl => Some(info),
            _ => None,
        }
    }
}

impl Outcome {
    fn into_result(self, name: &str) -> Result<Arc<FunctionInfo>, Error> {
        match self {
            Outcome::Known(info) => Ok(info),
            Outcome::Missing => Err(Error::NotFound(name.to_string())),
            Outcome::Unreachable(reason) => Err(Error::RegistryUnavailable(reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use futures::future::join_all;

    use super::*;

    const TTL: Duration = Duration::from_millis(5000);

    /// A registry holding one function "f" at `version` (0 = not pushed),
    /// that can be switched off, and counts the calls it gets.
    #[derive(Default)]
    struct FakeRegistry {
        version: AtomicU64,
        down: std::sync::atomic::AtomicBool,
        calls: AtomicUsize,
    }

    impl FakeRegistry {
        fn with_version(version: u64) -> Self {
            let fake = FakeRegistry::default();
            fake.version.store(version, Ordering::SeqCst);
            fake
        }
    }

    impl FunctionSource for &FakeRegistry {
        async fn fetch(&self, name: &str) -> Result<FunctionInfo, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            // A registry call takes a while, so concurrent callers overlap.
            tokio::time::sleep(Duration::from_millis(10)).await;
            if self.down.load(Ordering::SeqCst) {
                return Err(Status::unavailable("connection refused"));
            }
            match self.version.load(Ordering::SeqCst) {
                0 => Err(Status::not_found(format!(
                    "function '{name}' does not exist"
                ))),
                version => Ok(FunctionInfo {
                    name: name.to_string(),
                    version,
                    ..FunctionInfo::default()
                }),
            }
        }
    }

    async fn version(cache: &MetadataCache<&FakeRegistry>) -> Result<u64, Error> {
        cache.get("f").await.map(|info| info.version)
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_make_one_registry_call() {
        let registry = FakeRegistry::with_version(1);
        let cache = MetadataCache::new(&registry, TTL);
        let versions = join_all((0..20).map(|_| version(&cache))).await;
        assert!(versions.iter().all(|v| matches!(v, Ok(1))));
        assert_eq!(registry.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_of_an_unknown_function_make_one_registry_call() {
        let registry = FakeRegistry::with_version(0);
        let cache = MetadataCache::new(&registry, TTL);
        let results = join_all((0..20).map(|_| version(&cache))).await;
        assert!(results.iter().all(|r| matches!(r, Err(Error::NotFound(_)))));
        assert_eq!(registry.calls.load(Ordering::SeqCst), 1);
        assert!(
            cache.slots.lock().expect("lock").is_empty(),
            "unknown names are not kept"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_version_is_served_only_after_the_ttl() {
        let registry = FakeRegistry::with_version(1);
        let cache = MetadataCache::new(&registry, TTL);
        assert_eq!(version(&cache).await.expect("found"), 1);
        registry.version.store(2, Ordering::SeqCst);
        tokio::time::advance(TTL - Duration::from_millis(100)).await;
        assert_eq!(version(&cache).await.expect("cached"), 1);
        assert_eq!(registry.calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(version(&cache).await.expect("refreshed"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_registry_outage_keeps_serving_the_last_version_and_retries_after_the_ttl() {
        let registry = FakeRegistry::with_version(1);
        let cache = MetadataCache::new(&registry, TTL);
        assert_eq!(version(&cache).await.expect("found"), 1);
        registry.down.store(true, Ordering::SeqCst);
        tokio::time::advance(TTL).await;
        assert_eq!(version(&cache).await.expect("stale but served"), 1);
        assert_eq!(version(&cache).await.expect("stale but served"), 1);
        assert_eq!(
            registry.calls.load(Ordering::SeqCst),
            2,
            "no registry call per request during an outage"
        );
        registry.down.store(false, Ordering::SeqCst);
        registry.version.store(3, Ordering::SeqCst);
        tokio::time::advance(TTL).await;
        assert_eq!(version(&cache).await.expect("back"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_registry_outage_with_nothing_cached_is_unavailable() {
        let registry = FakeRegistry::with_version(1);
        registry.down.store(true, Ordering::SeqCst);
        let cache = MetadataCache::new(&registry, TTL);
        match version(&cache).await {
            Err(Error::RegistryUnavailable(reason)) => assert_eq!(reason, "connection refused"),
            other => panic!("expected RegistryUnavailable, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalidated_function_is_asked_for_again_at_once() {
        let registry = FakeRegistry::with_version(1);
        let cache = MetadataCache::new(&registry, TTL);
        assert_eq!(version(&cache).await.expect("found"), 1);
        registry.version.store(0, Ordering::SeqCst);
        cache.invalidate("f");
        assert!(matches!(version(&cache).await, Err(Error::NotFound(_))));
        assert_eq!(registry.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_function_is_gone_after_the_ttl() {
        let registry = FakeRegistry::with_version(1);
        let cache = MetadataCache::new(&registry, TTL);
        assert_eq!(version(&cache).await.expect("found"), 1);
        registry.version.store(0, Ordering::SeqCst);
        tokio::time::advance(TTL).await;
        assert!(matches!(version(&cache).await, Err(Error::NotFound(_))));
    }
}
