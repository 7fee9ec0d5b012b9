//! The gRPC admin API, `sock.v1.Registry`.
//!
//! Push and delete want the admin token; `GetFunction`, `ListFunctions` (the
//! gateways find cron and Kafka triggers with it; it shows nothing
//! `GetFunction` does not), `ClaimFiring` and `WatchFunctions` (the
//! gateways keep their cached versions current with it) want the node
//! token (or the admin token). Requests may be `max_bundle_mb` + 1 MiB;
//! tonic refuses larger ones with OUT_OF_RANGE, which a response layer
//! turns into RESOURCE_EXHAUSTED "bundle is far over the limit of N MiB",
//! as gRPC's status codes prescribe.
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use sock_bundle::Size;
use sock_proto::v1::registry_server::{Registry, RegistryServer};
use sock_proto::v1::{
    ClaimFiringRequest, ClaimFiringResponse, DeleteFunctionRequest, DeleteFunctionResponse,
    ErrorKind, FunctionChange, FunctionInfo, GetFunctionRequest, ListFunctionsRequest,
    ListFunctionsResponse, PushFunctionRequest, WatchFunctionsRequest,
};
use sock_service::limits::{self, Carrying};
use tokio::net::TcpListener;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::error::StartError;
use crate::functions::Functions;
use crate::metrics::Metrics;

struct RegistryService {
    functions: Functions,
    metrics: Arc<Metrics>,
    /// Ends the watch streams, which would otherwise hold the server's
    /// graceful shutdown open for ever.
    shutdown: CancellationToken,
}

#[tonic::async_trait]
impl Registry for RegistryService {
    type WatchFunctionsStream =
        Pin<Box<dyn Stream<Item = Result<FunctionChange, Status>> + Send + 'static>>;

    async fn push_function(
        &self,
        request: Request<PushFunctionRequest>,
    ) -> Result<Response<FunctionInfo>, Status> {
        let PushFunctionRequest { name, bundle } = request.into_inner();
        let pushed = self
            .functions
            .push(name, bundle)
            .await
            .map_err(Status::from);
        self.metrics
            .pushed(pushed.as_ref().map(|_| ()).map_err(Status::code));
        Ok(Response::new(pushed?))
    }

    async fn get_function(
        &self,
        request: Request<GetFunctionRequest>,
    ) -> Result<Response<FunctionInfo>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(self.functions.get(name).await?))
    }

    async fn list_functions(
        &self,
        _: Request<ListFunctionsRequest>,
    ) -> Result<Response<ListFunctionsResponse>, Status> {
        let functions = self.functions.list().await?;
        Ok(Response::new(ListFunctionsResponse { functions }))
    }

    async fn delete_function(
        &self,
        request: Request<DeleteFunctionRequest>,
    ) -> Result<Response<DeleteFunctionResponse>, Status> {
        self.functions.delete(request.into_inner().name).await?;
        Ok(Response::new(DeleteFunctionResponse {}))
    }

    async fn claim_firing(
        &self,
        request: Request<ClaimFiringRequest>,
    ) -> Result<Response<ClaimFiringResponse>, Status> {
        let ClaimFiringRequest {
            name,
            schedule,
            fire_at_unix_ms,
            holder,
        } = request.into_inner();
        if holder.is_empty() {
            return Err(
                ErrorKind::InvalidRequest.status("a claim needs a holder: who fires the function")
            );
        }
        let claimed = self
            .functions
            .claim_firing(name, schedule, fire_at_unix_ms, holder)
            .await?;
        Ok(Response::new(ClaimFiringResponse { claimed }))
    }

    async fn watch_functions(
        &self,
        _: Request<WatchFunctionsRequest>,
    ) -> Result<Response<Self::WatchFunctionsStream>, Status> {
        // Subscribed before the first message, so nothing made after it
        // is missed; a watcher that falls behind gets an empty name too.
        let changes = BroadcastStream::new(self.functions.watch())
            .map(|change| Ok(change.unwrap_or_default()));
        let live = futures::stream::once(async { Ok(FunctionChange::default()) });
        let stream = live
            .chain(changes)
            .take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves the admin API, health and reflection until `shutdown`.
///
/// Requests may be `max_bundle_bytes` plus an envelope, so a bundle just over
/// the limit still arrives and is refused with a message saying by how
/// much, while a far larger one is cut off by tonic before it is buffered.
pub(crate) async fn serve(
    functions: Functions,
    listener: TcpListener,
    max_bundle_bytes: u64,
    tokens: sock_service::Tokens,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let (health, _) = tonic_health::server::health_reporter();
    health
        .set_serving::<RegistryServer<RegistryService>>()
        .await;
    let service = RegistryServer::new(RegistryService {
        functions,
        metrics,
        shutdown: shutdown.clone(),
    })
    .carrying(max_bundle_bytes);
    let too_large = Status::resource_exhausted(format!(
        "bundle is far over the limit of {}",
        Size(max_bundle_bytes)
    ));
    let mut server = Server::builder()
        .layer(sock_telemetry::grpc::ServerTraceLayer)
        .layer(sock_service::AuthLayer::new(tokens, access))
        .layer(limits::refuse_too_large(too_large));
    sock_service::with_standard_services(&mut server, health)
        .add_service(service)
        .serve_with_incoming_shutdown(
            sock_service::grpc_incoming(listener),
            shutdown.cancelled_owned(),
        )
        .await?;
    Ok(())
}

/// Changing what is deployed is the operator's. Reading functions is
/// also what the gateways do with the node token: one to call it, all to
/// find their cron triggers (a list shows nothing that reading each one
/// does not), and claiming cron firings is theirs alone.
fn access(path: &str) -> sock_service::Access {
    use sock_service::Access;
    match path {
        // Gateways list functions to find their cron and Kafka triggers,
        // and watch them to keep their cached versions current.
        "/sock.v1.Registry/GetFunction"
        | "/sock.v1.Registry/ListFunctions"
        | "/sock.v1.Registry/ClaimFiring"
        | "/sock.v1.Registry/WatchFunctions" => Access::Node,
        p if p.starts_with("/sock.v1.Registry/") => Access::Admin,
        _ => Access::Open,
    }
}
