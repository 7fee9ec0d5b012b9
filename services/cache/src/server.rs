//! The gRPC frame: `sock.v1.Cache` with health, reflection and tracing.
use std::sync::Arc;
use std::time::Duration;

use sock_proto::v1::cache_server::{Cache, CacheServer};
use sock_proto::v1::{FunctionRef, PrepareRequest, PrepareResponse, TreeRequest, TreeResponse};
use sock_service::limits::{self, Carrying, MAX_WHEEL_BYTES};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::error::{Error, StartError};
use crate::installer::PipInstaller;
use crate::metrics::Metrics;
use crate::plan::Planner;
use crate::prepare::Preparer;
use crate::registry::Registry;
use crate::store::Store;

/// Serves `sock.v1.Cache` on `listener` until `shutdown` is cancelled,
/// then lets in-flight calls finish.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let tokens = sock_service::Tokens::new(
        None,
        config.admin_token.as_ref(),
        config.node_token.as_ref(),
    );
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::InvalidConfig(format!("cannot read the listen address: {e}")))?;
    sock_service::require_tokens("the cache", addr, &tokens).map_err(StartError::InvalidConfig)?;
    let registry = Registry::new(&config.registry_url, config.node_token.as_ref())?;
    let data_dir = config.data_dir.clone();
    let planner_config = config.clone();
    let (store, planner) = tokio::task::spawn_blocking(move || {
        let store = Store::open(&data_dir)?;
        let installer = Arc::new(PipInstaller::new(&planner_config, store.root())?);
        let planner = Planner::open(&planner_config, store.root(), store.tmp(), installer)?;
        Ok::<_, StartError>((store, planner))
    })
    .await
    .expect("preparing the data dir does not panic")?;
    // The metrics server stops with the gRPC one, however that ends.
    let stop = shutdown.child_token();
    let _stop_on_return = stop.clone().drop_guard();
    let (metrics, exposed) = Metrics::new();
    sock_service::serve_metrics(&config.metrics_listen, exposed, &tokens, stop.clone())
        .await
        .map_err(StartError::Metrics)?;
    let preparer = Preparer::new(store, registry, metrics);
    let planner = Arc::new(planner);
    tokio::spawn(relearn(
        planner.clone(),
        Duration::from_millis(config.tree_rebuild_ms.max(1)),
        stop.clone(),
    ));
    let service = CacheService {
        preparer: Arc::new(preparer),
        planner,
    };

    let (health, _) = tonic_health::server::health_reporter();
    health.set_serving::<CacheServer<CacheService>>().await;
    let too_large = Status::resource_exhausted(format!(
        "a built wheel is over the limit of {} MiB",
        MAX_WHEEL_BYTES >> 20
    ));
    let mut server = Server::builder()
        .layer(sock_telemetry::grpc::ServerTraceLayer)
        .layer(sock_service::AuthLayer::new(tokens, access))
        .layer(limits::refuse_too_large(too_large));
    tracing::info!(addr = ?listener.local_addr().ok(), "cache serving");
    sock_service::with_standard_services(&mut server, health)
        .add_service(CacheServer::new(service).carrying(MAX_WHEEL_BYTES))
        .serve_with_incoming_shutdown(
            sock_service::grpc_incoming(listener),
            stop.cancelled_owned(),
        )
        .await
        .map_err(StartError::Serve)
}

/// Rebuilds a learned import tree every `every` while something new was
/// seen, until `stop`.
async fn relearn(planner: Arc<Planner>, every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => planner.relearn(false).await,
        }
    }
}

/// `Prepare` is for the node's sandboxd, with the node token.
fn access(path: &str) -> sock_service::Access {
    if path.starts_with("/sock.v1.Cache/") {
        sock_service::Access::Node
    } else {
        sock_service::Access::Open
    }
}

struct CacheService {
    preparer: Arc<Preparer>,
    planner: Arc<Planner>,
}

#[tonic::async_trait]
impl Cache for CacheService {
    async fn prepare(
        &self,
        request: Request<PrepareRequest>,
    ) -> Result<Response<PrepareResponse>, Status> {
        let request = request.into_inner();
        let function = request.function.ok_or(Error::MissingFunction)?;
        let installed = self
            .preparer
            .prepare(&function.name, function.version)
            .await?;
        let plan = self
            .planner
            .plan(
                &function.name,
                installed.version,
                &installed.config.requirements,
                &request.built,
            )
            .await?;
        if !plan.builds.is_empty() {
            return Ok(Response::new(PrepareResponse {
                builds: plan.builds,
                ..PrepareResponse::default()
            }));
        }
        Ok(Response::new(PrepareResponse {
            function: Some(FunctionRef {
                name: function.name,
                version: installed.version,
            }),
            code_dir: installed.dir.to_string_lossy().into_owned(),
            package_dirs: plan.package_dirs,
            imports: plan.imports,
            zygote_chain: plan.zygote_chain,
            config: Some(installed.config),
            builds: Vec::new(),
        }))
    }

    async fn tree(&self, request: Request<TreeRequest>) -> Result<Response<TreeResponse>, Status> {
        Ok(Response::new(
            self.planner.tree(request.into_inner().rebuild).await,
        ))
    }
}
