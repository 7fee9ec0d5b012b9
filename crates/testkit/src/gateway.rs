//! A real gateway in the test's process, on loopback ports; stopped when
//! dropped.
use std::net::SocketAddr;
use std::time::Duration;

use sock_gateway::Config;
use sock_proto::v1::gateway_client::GatewayClient;
use sock_service::limits::Carrying;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Long enough for its Kafka consumers to finish their call, commit and
/// leave their group.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Gateway {
    grpc: SocketAddr,
    http: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), sock_gateway::StartError>>>,
}

impl Gateway {
    /// A gateway with `config` (its `listen` is not used: the gateway
    /// serves on free loopback ports).
    pub async fn start(config: Config) -> Gateway {
        let grpc = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway gRPC");
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway HTTP");
        let (grpc_addr, http_addr) = (
            grpc.local_addr().expect("gateway gRPC address"),
            http.local_addr().expect("gateway HTTP address"),
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(sock_gateway::run(config, grpc, http, shutdown.clone()));
        Gateway {
            grpc: grpc_addr,
            http: http_addr,
            shutdown,
            task: Some(task),
        }
    }

    /// The URL of its gRPC API.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The base URL of its HTTP API.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// A client of its gRPC API, connected on first use.
    pub fn client(&self) -> GatewayClient<Channel> {
        GatewayClient::new(
            Channel::from_shared(self.endpoint())
                .expect("gateway URL")
                .connect_lazy(),
        )
        .carrying(sock_service::limits::MAX_CALL_BYTES)
    }

    /// Stops it as SIGTERM would (calls in flight finish, Kafka consumers
    /// commit and leave their group), waits for that, and fails the test
    /// unless it ran cleanly.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(STOP_TIMEOUT, task)
                .await
                .expect("the gateway stops")
                .expect("the gateway task")
                .expect("the gateway ran cleanly");
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
