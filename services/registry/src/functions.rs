//! What both front ends ask of the registry: validate, store, look up,
//! and announce each change of a function's current version to its
//! watchers. Validation and sled work block, so they run on the blocking
//! pool.
//!
//! A push whose ol.yaml `limits:` ask for more than the registry's ceilings
//! (`sock_service::Ceilings`: the same four `max_*` keys and defaults as
//! sandboxd's) is INVALID_ARGUMENT "ol.yaml asks for limits.memory_mb = 1024,
//! over this platform's ceiling of 512 (max_memory_mb)". A refused push
//! uses no version.
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sled::IVec;
use sock_bundle::{BundleLimits, validate_name};
use sock_proto::v1::{FunctionChange, FunctionInfo};
use sock_service::Ceilings;
use tokio::sync::broadcast;

use crate::error::Error;
use crate::store::Store;

/// Changes a watcher may fall behind by before it is told to forget
/// everything instead.
const CHANGES_KEPT: usize = 1024;

#[derive(Clone)]
pub(crate) struct Functions {
    store: Arc<Store>,
    limits: BundleLimits,
    ceilings: Ceilings,
    changes: broadcast::Sender<FunctionChange>,
}

impl Functions {
    pub(crate) fn new(store: Store, limits: BundleLimits, ceilings: Ceilings) -> Self {
        Functions {
            store: Arc::new(store),
            limits,
            ceilings,
            changes: broadcast::channel(CHANGES_KEPT).0,
        }
    }

    /// Each change made from now on, as it is made: a push as the new
    /// version, a delete as version 0.
    pub(crate) fn watch(&self) -> broadcast::Receiver<FunctionChange> {
        self.changes.subscribe()
    }

    fn announce(&self, name: &str, version: u64) {
        // No watcher is not a failure.
        let _ = self.changes.send(FunctionChange {
            name: name.to_string(),
            version,
        });
    }

    /// Validates name, bundle and the limits its ol.yaml asks, then stores the bundle as the next
    /// version. A refused push changes nothing.
    pub(crate) async fn push(&self, name: String, bundle: Vec<u8>) -> Result<FunctionInfo, Error> {
        validate_name(&name)?;
        let this = self.clone();
        let pushed = tokio::task::spawn_blocking(move || {
            let manifest = sock_bundle::validate(&bundle, &this.limits)?;
            if let Some(limits) = &manifest.config.limits {
                this.ceilings.check(limits)?;
            }
            this.store
                .push(&name, &bundle, manifest.config, now_unix_ms())
        })
        .await?;
        match &pushed {
            Ok(info) => {
                tracing::info!(function = %info.name, version = info.version, bytes = info.bundle_bytes, "pushed");
                self.announce(&info.name, info.version);
            }
            Err(reason @ (Error::Invalid(_) | Error::OverCeiling(_))) => {
                tracing::info!(%reason, "push refused")
            }
            Err(_) => {}
        }
        pushed
    }

    pub(crate) async fn get(&self, name: String) -> Result<FunctionInfo, Error> {
        self.blocking(name, |store, name| store.get(name)).await
    }

    pub(crate) async fn latest(&self, name: String) -> Result<(FunctionInfo, IVec), Error> {
        self.blocking(name, |store, name| store.latest(name)).await
    }

    pub(crate) async fn version(
        &self,
        name: String,
        asked: u64,
    ) -> Result<(FunctionInfo, IVec), Error> {
        self.blocking(name, move |store, name| store.version(name, asked))
            .await
    }

    pub(crate) async fn list(&self) -> Result<Vec<FunctionInfo>, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.list()).await?
    }

    pub(crate) async fn delete(&self, name: String) -> Result<(), Error> {
        self.blocking(name.clone(), |store, name| store.delete(name))
            .await?;
        tracing::info!(function = %name, "deleted");
        self.announce(&name, 0);
        Ok(())
    }

    /// Claims one firing of a cron trigger for `holder` (see
    /// `Store::claim_firing`): the gateways' way to fire each fire time
    /// once across the cluster.
    pub(crate) async fn claim_firing(
        &self,
        name: String,
        schedule: String,
        fire_at_unix_ms: i64,
        holder: String,
    ) -> Result<bool, Error> {
        self.blocking(name, move |store, name| {
            store.claim_firing(name, &schedule, fire_at_unix_ms, &holder, now_unix_ms())
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        name: String,
        f: impl FnOnce(&Store, &str) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        validate_name(&name)?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store, &name)).await?
    }
}

fn now_unix_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970");
    i64::try_from(since_epoch.as_millis()).expect("milliseconds since 1970 fit in i64")
}
