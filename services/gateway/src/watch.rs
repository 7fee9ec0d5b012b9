//! Follows the registry's announcements of changed versions, so a push
//! or delete made anywhere (another gateway, the registry's own API)
//! reaches this gateway's caches at once instead of after
//! `registry_cache_ms`: the function's cached description is dropped and
//! the cron scheduler reads its schedules again.
//!
//! While the watch is down (the registry restarting, say), nothing is
//! announced and `registry_cache_ms` alone bounds how stale a description
//! gets; when it is back, everything cached is dropped, as changes may
//! have been missed.
use std::sync::Arc;
use std::time::Duration;

use sock_proto::v1::WatchFunctionsRequest;
use sock_proto::v1::registry_client::RegistryClient;
use sock_service::AuthedChannel;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::cron::Refresh;
use crate::error::reason;
use crate::invoke::Invoker;

/// Wait before watching again after the watch broke.
const RETRY: Duration = Duration::from_secs(1);

/// Who acts on an announced change.
pub(crate) struct Watchers {
    pub invoker: Arc<Invoker>,
    pub cron: Refresh,
}

/// Watches `registry` until `stop`, watching again after it breaks.
pub(crate) async fn follow(
    registry: RegistryClient<AuthedChannel>,
    watchers: Watchers,
    stop: CancellationToken,
) {
    let mut live = false;
    loop {
        let ended = tokio::select! {
            () = stop.cancelled() => return,
            ended = watch(registry.clone(), &watchers, &mut live) => ended,
        };
        if live {
            let why = ended.map_or_else(
                |status| reason(&status),
                |()| "the registry ended it".into(),
            );
            tracing::warn!(error = %why, "lost the registry's watch; versions are cached for registry_cache_ms until it is back");
            live = false;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

async fn watch(
    mut registry: RegistryClient<AuthedChannel>,
    watchers: &Watchers,
    live: &mut bool,
) -> Result<(), Status> {
    let mut changes = registry
        .watch_functions(WatchFunctionsRequest {})
        .await?
        .into_inner();
    while let Some(change) = changes.message().await? {
        if change.name.is_empty() {
            watchers.invoker.forget_all();
            if !*live {
                tracing::info!("watching the registry for new versions");
                *live = true;
            }
        } else {
            tracing::debug!(function = %change.name, version = change.version, "registry announced a change");
            watchers.invoker.invalidate(&change.name);
        }
        watchers.cron.now();
    }
    Ok(())
}
