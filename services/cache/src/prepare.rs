//! `Prepare`: per-function state, freshness and single-flight fetching.
//!
//! One slot per function (its newest version: ETag, Last-Modified, last
//! check, dir, config) behind its own async mutex. `Prepare(name, version)`
//! prepares exactly the version asked: from disk when it is unpacked there
//! (the slot's, or the one kept beside it), else by one
//! `GET /functions/{name}/versions/{n}`; a version never changes, so it is
//! never revalidated. Version 0 means "the latest" and costs one
//! conditional GET each time (a 304 when nothing changed): only callers
//! that did not resolve a version ask for it (the gateway always asks an
//! exact one), so the cache needs no lifetime setting of its own.
//! A fetch is a spawned task that owns the slot's lock, so concurrent
//! callers share it and a caller that gives up does not cancel it. The cache
//! trusts that a version number names one bundle: after the registry's data
//! is wiped (numbers start again at 1), wipe the nodes' caches too. The
//! package half follows (`plan.rs`).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::Instrument;

use crate::error::Error;
use crate::metrics::{Metrics, fetched_answer};
use crate::registry::{Download, Fetched, Registry};
use crate::store::{Installed, Store};

pub(crate) struct Preparer {
    store: Arc<Store>,
    registry: Registry,
    metrics: Arc<Metrics>,
    /// One slot per function name. Its async lock is held across the
    /// fetch, so concurrent prepares of one function share one request
    /// while other functions proceed.
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

#[derive(Default)]
struct Slot {
    /// Whether `current` was looked up on disk after a restart.
    loaded: bool,
    current: Option<Installed>,
}

impl Preparer {
    pub(crate) fn new(store: Store, registry: Registry, metrics: Arc<Metrics>) -> Preparer {
        Preparer {
            store: Arc::new(store),
            registry,
            metrics,
            slots: Mutex::default(),
        }
    }

    /// Makes sure version `asked` of `name` is unpacked, and says where;
    /// `asked` 0 means the latest, as the registry knows it now. A version
    /// never changes, so an exact one is never
    /// revalidated: whoever resolved it (a gateway) decides which runs.
    #[tracing::instrument(name = "cache.prepare", skip_all, fields(function = %name, version = asked, prepared))]
    pub(crate) async fn prepare(
        self: &Arc<Self>,
        name: &str,
        asked: u64,
    ) -> Result<Installed, Error> {
        sock_bundle::validate_name(name).map_err(|source| Error::InvalidName { source })?;
        let mut slot = self.slot(name).lock_owned().await;
        if !slot.loaded {
            let store = self.store.clone();
            let owned = name.to_string();
            slot.current = tokio::task::spawn_blocking(move || store.latest(&owned))
                .await
                .expect("reading the cache's own files does not panic");
            slot.loaded = true;
        }

        // "The latest" is asked of the registry each time; an exact version
        // is on disk if it was prepared before.
        let on_hand = if asked == 0 {
            None
        } else if let Some(current) = slot.current.clone().filter(|c| c.version == asked) {
            Some(current)
        } else {
            // The version before the current one stays on disk while
            // sandboxes may run it (see `Store::prune`).
            let store = self.store.clone();
            let owned = name.to_string();
            tokio::task::spawn_blocking(move || store.installed(&owned, asked))
                .await
                .expect("reading the cache's own files does not panic")
        };
        let prepared = match on_hand {
            Some(installed) => {
                self.metrics.hit();
                Ok(installed)
            }
            None => {
                // The fetch owns the slot's lock and runs to the end even
                // when this caller gives up (deadline, disconnect), so the
                // next caller never races a half-done unpack.
                let this = self.clone();
                let name = name.to_string();
                tokio::spawn(
                    async move {
                        match asked {
                            0 => this.refresh(&name, &mut slot).await,
                            _ => this.fetch_exact(&name, asked, &mut slot).await,
                        }
                    }
                    .in_current_span(),
                )
                .await
                .expect("a fetch does not panic")
            }
        };
        if let Ok(installed) = &prepared {
            tracing::Span::current().record("prepared", installed.version);
        }
        prepared
    }

    /// Fetches and unpacks exactly version `asked` of `name`; it becomes
    /// the slot's current version when it is newer.
    async fn fetch_exact(
        &self,
        name: &str,
        asked: u64,
        slot: &mut Slot,
    ) -> Result<Installed, Error> {
        let fetched = self.registry.fetch_version(name, asked).await;
        self.metrics.fetched(&fetched, |_| "bundle");
        let newest = slot
            .current
            .as_ref()
            .map_or(asked, |c| c.version.max(asked));
        let installed = self.install(name, fetched?, newest).await?;
        if newest == asked {
            slot.current = Some(installed.clone());
        }
        Ok(installed)
    }

    /// Unpacks `download` and keeps only what `Store::prune` keeps beside
    /// version `newest`.
    async fn install(
        &self,
        name: &str,
        download: Download,
        newest: u64,
    ) -> Result<Installed, Error> {
        let store = self.store.clone();
        let owned = name.to_string();
        let installed = tokio::task::spawn_blocking(move || {
            let installed = store.install(&owned, download)?;
            store.prune(&owned, newest);
            Ok::<_, Error>(installed)
        })
        .await
        .expect("unpacking does not panic")?;
        tracing::info!(version = installed.version, "unpacked a new version");
        Ok(installed)
    }

    /// Asks the registry about `name`'s latest version and brings `slot`
    /// up to date.
    async fn refresh(&self, name: &str, slot: &mut Slot) -> Result<Installed, Error> {
        let have = slot
            .current
            .as_ref()
            .map(|c| c.validators.clone())
            .unwrap_or_default();
        let fetched = self.registry.fetch(name, &have).await;
        self.metrics.fetched(&fetched, fetched_answer);
        match fetched {
            Ok(Fetched::NotModified) => {
                if slot.current.is_none() {
                    return Err(Error::RegistryProtocol {
                        name: name.to_string(),
                        reason: "304 Not Modified to an unconditional request".into(),
                    });
                }
            }
            Ok(Fetched::Bundle(download)) => {
                let version = download.version;
                slot.current = Some(self.install(name, download, version).await?);
            }
            Err(Error::RegistryUnavailable { reason }) => {
                return match slot.current.as_ref() {
                    Some(current) => {
                        tracing::warn!(%reason, version = current.version, "registry unavailable; serving the cached copy");
                        Ok(current.clone())
                    }
                    None => Err(Error::RegistryUnavailable { reason }),
                };
            }
            Err(Error::NotFound { name }) => {
                // Deleted from the registry: stop serving it.
                slot.current = None;
                return Err(Error::NotFound { name });
            }
            Err(other) => return Err(other),
        }

        Ok(slot
            .current
            .clone()
            .expect("a fetch that succeeded left a current version"))
    }

    fn slot(&self, name: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self
            .slots
            .lock()
            .expect("the slot map is never held across a panic");
        slots.entry(name.to_string()).or_default().clone()
    }
}
