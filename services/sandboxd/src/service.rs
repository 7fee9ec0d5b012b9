//! The `sock.v1.Sandboxd` gRPC service and the server around it.
//!
//! `Status` answers the sandboxes by state and per function version, the
//! pool's total, reserved, free and used memory, its waiters, evictions,
//! warm and cold starts, spares, zygote forks and start failures, and each
//! zygote (id, live children, memory used and reserved); `metrics.rs` reads
//! the same snapshot. `Tree` is `report.rs`'s; `Logs` serves `logs.rs`'s
//! rings. A cold start whose `Prepare` answers source builds runs them
//! (`build.rs`) and asks again, at most 16 rounds.
//!
//! `Invoke` takes the budget the gateway sent (0: the node's `timeout_ms`;
//! capped at `max_timeout_ms`) and hands the call to `warm.rs`. On a miss
//! it asks the cache to `Prepare` the version asked, and takes the answer
//! only when it is that version and every dir it names lies below
//! `cache_data_dir` (`inside_cache`): root mounts nothing else.
//! At SIGTERM the server stops taking calls, lets those in flight finish
//! for `shutdown_grace_ms`, then destroys every sandbox.
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use sock_proto::v1::cache_client::CacheClient;
use sock_proto::v1::sandboxd_server::{Sandboxd, SandboxdServer};
use sock_proto::v1::{
    ErrorKind, FunctionConfig, FunctionRef, FunctionSandboxes, LogsRequest, PrepareRequest,
    PrepareResponse, SandboxInvokeRequest, SandboxInvokeResponse, StatusRequest, StatusResponse,
    TreeRequest, TreeResponse, ZygoteStatus,
};
use sock_service::AuthedChannel;
use sock_service::limits::{self, Carrying};
use sock_telemetry::grpc::ServerTraceLayer;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::build::BuildLocks;
use crate::config::Config;
use crate::error::{Error, StartError};
use crate::listener::Listener;
use crate::spec::{Limits, SandboxSpec};
use crate::warm::{Call, Manager, Prepared};
use crate::zygote::ZygoteSpec;

/// Every sandboxd call is the node's own business: the gateway's (or the
/// operator's). Over a unix socket the peer-credential check has already
/// admitted the caller.
fn access(path: &str) -> sock_service::Access {
    if path.starts_with("/sock.v1.Sandboxd/") {
        sock_service::Access::Node
    } else {
        sock_service::Access::Open
    }
}

/// Rounds of source builds one cold start may need: each round builds
/// what the cache found missing so far (a dependency of a built package
/// may need one too).
const MAX_BUILD_ROUNDS: usize = 16;

/// After the grace period the remaining sandboxes are killed, which ends
/// their calls at once; this bounds the wait for those answers.
const AFTER_KILL: Duration = Duration::from_secs(5);

struct SandboxdService {
    manager: Arc<Manager>,
    cache: CacheClient<AuthedChannel>,
    builds: Arc<BuildLocks>,
    default_timeout_ms: u32,
    max_timeout_ms: u32,
    /// `import_cache = "tree"`: cold starts fork from zygotes.
    zygotes: bool,
    calls: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl Sandboxd for SandboxdService {
    async fn invoke(
        &self,
        request: Request<SandboxInvokeRequest>,
    ) -> Result<Response<SandboxInvokeResponse>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(self.call(request.into_inner()).await?))
    }

    type LogsStream = crate::logs::LogStream;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let request = request.into_inner();
        Ok(Response::new(crate::logs::stream(
            &request.function,
            request.follow,
        )))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let node = self.manager.status();
        Ok(Response::new(StatusResponse {
            sandboxes: node.idle + node.paused + node.running,
            calls_total: self.calls.load(Ordering::Relaxed),
            cgroup_version: self.manager.cgroup_version(),
            idle: node.idle,
            paused: node.paused,
            running: node.running,
            pool_total_mb: node.pool.total_mb,
            pool_reserved_mb: node.pool.reserved_mb(),
            pool_free_mb: node.pool.total_mb.saturating_sub(node.pool.reserved_mb()),
            pool_used_mb: node.used_bytes >> 20,
            pool_waiting: node.pool.waiting,
            evictions_total: node.evictions,
            warm_starts_total: node.warm_starts,
            cold_starts_total: node.cold_starts,
            functions: node
                .functions
                .into_iter()
                .map(|(key, [idle, paused, running])| FunctionSandboxes {
                    function: Some(FunctionRef {
                        name: key.name.to_string(),
                        version: key.version,
                    }),
                    idle,
                    paused,
                    running,
                })
                .collect(),
            spare_cgroups: node.spare_cgroups,
            spare_netns: node.spare_netns,
            zygote_forks_total: node.forks,
            zygote_start_failures_total: node.zygote_start_failures,
            zygotes: node
                .zygotes
                .into_iter()
                .map(|z| ZygoteStatus {
                    id: z.id,
                    children: z.children,
                    memory_used_mb: z.memory_bytes >> 20,
                    memory_reserved_mb: z.reserved_mb,
                    parked: z.parked,
                })
                .collect(),
        }))
    }

    async fn tree(&self, request: Request<TreeRequest>) -> Result<Response<TreeResponse>, Status> {
        Ok(Response::new(self.node_tree(request.into_inner()).await?))
    }
}

impl SandboxdService {
    /// The cache's tree (rebuilt first when asked), with this node's
    /// zygotes filled in.
    async fn node_tree(&self, request: TreeRequest) -> Result<TreeResponse, Error> {
        let tree = self
            .cache
            .clone()
            .tree(request)
            .await
            .map_err(Error::Cache)?
            .into_inner();
        let manager = self.manager.clone();
        // Reads each live zygote's /proc.
        let reports = tokio::task::spawn_blocking(move || manager.tree_report())
            .await
            .expect("reading the zygotes does not panic");
        Ok(crate::report::fill(
            tree,
            &reports,
            crate::report::Now::new(),
        ))
    }

    /// A warm sandbox of the requested version if there is one; otherwise
    /// the cache prepares the code and a new sandbox runs it.
    async fn call(&self, req: SandboxInvokeRequest) -> Result<SandboxInvokeResponse, Error> {
        let function = req
            .function
            .filter(|f| !f.name.is_empty())
            .ok_or_else(|| Error::InvalidRequest("the request names no function".into()))?;
        let caller_config = req.config.unwrap_or_default();
        // The gateway worked the budget out once (the shortest of its
        // caller's, its gRPC deadline and the function's limit) and sends
        // what is left of it; a caller that sends none gets our default.
        // Capped whoever asks: the operator's ceiling holds.
        let timeout_ms = match req.timeout_ms {
            0 => self.default_timeout_ms,
            ms => ms,
        }
        .min(self.max_timeout_ms);
        let call = Call {
            name: &function.name,
            version: function.version,
            call_id: &req.call_id,
            payload: &req.payload,
            http: req.http.as_ref(),
            one_call: caller_config.fresh_sandbox_per_call,
            timeout: Duration::from_millis(u64::from(timeout_ms)),
        };
        let (version, outcome) = self
            .manager
            .invoke(call, || self.prepare(function.clone(), caller_config))
            .await?;
        Ok(SandboxInvokeResponse {
            outcome: Some(outcome),
            version,
        })
    }

    async fn prepare(
        &self,
        function: FunctionRef,
        caller_config: FunctionConfig,
    ) -> Result<Prepared, Error> {
        // Spawned: a source build (minutes, maybe) and the cache's install
        // of its wheel finish even when this caller gives up, so the next
        // cold start finds the package installed.
        let prepared = tokio::spawn(
            prepare_with_builds(
                self.cache.clone(),
                self.manager.clone(),
                self.builds.clone(),
                function.clone(),
            )
            .in_current_span(),
        )
        .await
        .expect("preparing does not panic")?;
        let inside = |dir: String| inside_cache(dir, self.manager.cache_data_dir());
        let code_dir = inside(prepared.code_dir)?;
        let package_dirs = prepared
            .package_dirs
            .into_iter()
            .map(inside)
            .collect::<Result<Vec<_>, _>>()?;
        let version = prepared
            .function
            .as_ref()
            .map_or(function.version, |f: &FunctionRef| f.version);
        // The caller resolved the version and checked the call against its
        // config: another version must not run in its place.
        if function.version != 0 && version != function.version {
            return Err(Error::Cache(ErrorKind::Platform.status(format!(
                "the cache prepared version {version} of '{}', not version {} as asked; \
                 is the cache older than sandboxd?",
                function.name, function.version
            ))));
        }
        // The same version's config as the caller's, from the bundle.
        let config = prepared.config.unwrap_or(caller_config);
        let limits = config.limits.unwrap_or_default();
        let mut environment: Vec<(String, String)> = config.environment.into_iter().collect();
        environment.sort();
        // No chain from the cache (or no tree there yet): the root zygote,
        // which imported only the runtime, still spares the interpreter's
        // start.
        let chain = self
            .zygotes
            .then(|| match prepared.zygote_chain.is_empty() {
                true => Ok(vec![ZygoteSpec {
                    id: "root".into(),
                    ..ZygoteSpec::default()
                }]),
                false => prepared
                    .zygote_chain
                    .into_iter()
                    .map(|node| {
                        Ok(ZygoteSpec {
                            id: node.id,
                            package_dirs: node
                                .package_dirs
                                .into_iter()
                                .map(inside)
                                .collect::<Result<_, _>>()?,
                            imports: node.imports,
                        })
                    })
                    .collect::<Result<_, Error>>(),
            })
            .transpose()?;
        Ok(Prepared {
            chain,
            version,
            spec: SandboxSpec {
                function: function.name,
                code_dir,
                package_dirs,
                entry_file: config.entry_file,
                environment,
                limits: Limits {
                    memory_mb: limits.memory_mb,
                    pids: limits.pids,
                    cpu_percent: limits.cpu_percent,
                },
            },
        })
    }
}

/// `dir`, if it lies strictly below the cache's data dir with no `.` or
/// `..` on the way: the cache names only its own dirs, and root mounts
/// nothing else (a cache that named `/root` would otherwise get it into a
/// sandbox; symlinks are refused as the dirs are opened).
fn inside_cache(dir: String, cache_data_dir: &Path) -> Result<PathBuf, Error> {
    let path = PathBuf::from(&dir);
    let plain = path.strip_prefix(cache_data_dir).is_ok_and(|rest| {
        rest.components().next().is_some()
            && rest.components().all(|c| matches!(c, Component::Normal(_)))
    });
    if plain {
        Ok(path)
    } else {
        Err(Error::UnsafeDir(format!(
            "the cache named {dir:?}, which is not a dir below its data dir {}",
            cache_data_dir.display()
        )))
    }
}

/// The cache's `Prepare`, doing the source builds its answers ask for
/// (packages with only an sdist, when the cache allows them) and asking
/// again with the wheels. The cache never calls sandboxd.
async fn prepare_with_builds(
    cache: CacheClient<AuthedChannel>,
    manager: Arc<Manager>,
    locks: Arc<BuildLocks>,
    function: FunctionRef,
) -> Result<PrepareResponse, Error> {
    let mut built = Vec::new();
    // Held until the cache has installed the wheels built under them.
    let mut building = Vec::new();
    let mut rounds = 0;
    loop {
        let prepared = cache
            .clone()
            .prepare(PrepareRequest {
                function: Some(function.clone()),
                built: std::mem::take(&mut built),
            })
            .instrument(tracing::info_span!(
                "cache.prepare",
                function = %function.name,
                version = function.version
            ))
            .await
            .map_err(Error::Cache)?
            .into_inner();
        building.clear();
        if prepared.builds.is_empty() {
            return Ok(prepared);
        }
        rounds += 1;
        if rounds > MAX_BUILD_ROUNDS {
            return Err(Error::Build {
                function: function.name.clone(),
                requirement: prepared.builds[0].requirement.clone(),
                reason: format!("more than {MAX_BUILD_ROUNDS} rounds of source builds"),
            });
        }
        for build in prepared.builds {
            let lock = locks.of(&build.requirement);
            let Ok(guard) = lock.clone().try_lock_owned() else {
                // Another cold start builds it: wait, then ask again.
                drop(lock.lock_owned().await);
                continue;
            };
            built.push(
                manager
                    .build(&function.name, build)
                    .instrument(tracing::info_span!("sandboxd.source_build"))
                    .await?,
            );
            building.push(guard);
        }
    }
}

/// Serves `sock.v1.Sandboxd` on `listener` until `shutdown`; then lets
/// in-flight calls finish for `shutdown_grace_ms` and destroys every
/// sandbox, idle or still running. Refuses to start when not root.
///
/// Callers over the unix socket are checked by their peer credentials,
/// callers over TCP by the node token; health and reflection stay open.
pub async fn run(
    config: Config,
    listener: Listener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    if u64::from(config.max_result_bytes) > limits::MAX_CALL_BYTES {
        return Err(StartError::InvalidConfig(format!(
            "max_result_bytes {} is over the {} bytes the gateway takes",
            config.max_result_bytes,
            limits::MAX_CALL_BYTES
        )));
    }
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let channel = Endpoint::from_shared(config.cache_addr.clone())
        .map_err(|e| StartError::InvalidConfig(format!("cache_addr {:?}: {e}", config.cache_addr)))?
        .connect_lazy();
    let cache = sock_service::authed(channel, config.node_token.as_ref())
        .map_err(|e| StartError::InvalidConfig(format!("node_token: {e}")))?;
    let tokens = sock_service::Tokens::new(
        None,
        config.admin_token.as_ref(),
        config.node_token.as_ref(),
    );
    let peers = sock_service::PeerCredLayer::new(config.client_uid, config.client_gid);
    let default_timeout_ms = config.timeout_ms;
    let max_timeout_ms = config.ceilings.max_timeout_ms;
    let zygotes = config.import_cache == sock_service::ImportCache::Tree;
    let metrics_listen = config.metrics_listen.clone();
    let manager = Manager::new(config)?;
    let calls = Arc::new(AtomicU64::new(0));
    // Stops with the gRPC server, however that ends.
    let stop_metrics = shutdown.child_token();
    let _stop_metrics_on_return = stop_metrics.clone().drop_guard();
    let exposed = crate::metrics::registry(manager.clone(), calls.clone());
    if let Err(err) =
        sock_service::serve_metrics(&metrics_listen, exposed, &tokens, stop_metrics).await
    {
        manager.shutdown().await;
        return Err(StartError::Metrics(err));
    }
    let service = SandboxdService {
        manager: manager.clone(),
        cache: CacheClient::new(cache),
        builds: Arc::default(),
        default_timeout_ms,
        max_timeout_ms,
        zygotes,
        calls,
    };

    let health = tonic_health::server::HealthReporter::new();
    health
        .set_serving::<SandboxdServer<SandboxdService>>()
        .await;
    // Peer credentials first: a unix caller they admit needs no token.
    // The gateway holds payloads to the same limit, so only another
    // caller meets this refusal.
    let too_large = Status::resource_exhausted(format!(
        "a request is over sandboxd's limit of {} MiB",
        limits::MAX_CALL_BYTES >> 20
    ));
    let mut server = Server::builder()
        .layer(ServerTraceLayer)
        .layer(peers)
        .layer(sock_service::AuthLayer::new(tokens, access))
        .layer(limits::refuse_too_large(too_large));
    let router = sock_service::with_standard_services(&mut server, health)
        .add_service(SandboxdServer::new(service).carrying(limits::MAX_CALL_BYTES));
    let stopping = shutdown.clone().cancelled_owned();
    // Held until the server is done: dropping it removes the socket file.
    let (serve, _socket_file) = match listener {
        Listener::Tcp(listener) => (
            router
                .serve_with_incoming_shutdown(sock_service::grpc_incoming(listener), stopping)
                .boxed(),
            None,
        ),
        Listener::Unix(listener, file) => (
            router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopping)
                .boxed(),
            Some(file),
        ),
    };
    tokio::pin!(serve);

    let served = tokio::select! {
        served = &mut serve => served,
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "calls still running after the shutdown grace period");
            manager.shutdown().await;
            tokio::time::timeout(AFTER_KILL, &mut serve).await.unwrap_or(Ok(()))
        }
    };
    manager.shutdown().await;
    served.map_err(StartError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_names_only_dirs_below_its_data_dir() {
        let cache = Path::new("/var/lib/sock/cache");
        for good in [
            "/var/lib/sock/cache/code/f/1",
            "/var/lib/sock/cache/packages/six==1.16.0/files",
        ] {
            assert!(inside_cache(good.into(), cache).is_ok(), "{good}");
        }
        for bad in [
            "/root",
            "/var/lib/sock/cache",
            "/var/lib/sock/cache/../../../../etc",
            "var/lib/sock/cache/code",
            "/var/lib/sock/cachex/code",
        ] {
            let err = inside_cache(bad.into(), cache).expect_err(bad);
            assert!(
                err.to_string().contains("not a dir below its data dir"),
                "{err}"
            );
        }
    }
}
