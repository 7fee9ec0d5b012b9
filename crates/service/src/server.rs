//! The parts of a gRPC server every sock service carries.
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// Binds a TCP listener, with the address in the error.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Starts a router with `grpc.health.v1` (answering from `health`) and
/// server reflection for every sock service, so grpcurl and health probes
/// work against any of them. The service adds its own service next.
pub fn with_standard_services<L: Clone>(
    server: &mut Server<L>,
    health: HealthReporter,
) -> Router<L> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sock_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("sock's own descriptor sets are valid");
    server
        .add_service(HealthServer::new(HealthService::from_health_reporter(
            health,
        )))
        .add_service(reflection)
}
