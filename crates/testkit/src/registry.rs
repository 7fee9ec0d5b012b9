//! A real registry in the test's process, on loopback ports; stopped when
//! dropped.
use std::net::SocketAddr;

use sock_proto::v1::registry_client::RegistryClient;
use sock_registry::Config;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub struct Registry {
    grpc: SocketAddr,
    http: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), sock_registry::StartError>>>,
    /// The data dir of [`Registry::start`], removed with it.
    _data: Option<TempDir>,
}

impl Registry {
    /// A registry with the default config on a new temp data dir.
    pub async fn start() -> Registry {
        let data = tempfile::tempdir().expect("temp dir for the registry");
        let config = Config {
            data_dir: data.path().join("registry"),
            ..Config::default()
        };
        let mut registry = Registry::start_with(config).await;
        registry._data = Some(data);
        registry
    }

    /// A registry with `config`, whose data dir the test owns (so that a
    /// registry started again on it finds what the last one stored).
    pub async fn start_with(config: Config) -> Registry {
        let grpc = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind registry gRPC");
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind registry HTTP");
        Registry::serve(config, grpc, http)
    }

    /// A registry with `config` on listeners the test bound.
    pub fn serve(config: Config, grpc: TcpListener, http: TcpListener) -> Registry {
        let grpc_addr = grpc.local_addr().expect("registry gRPC address");
        let http_addr = http.local_addr().expect("registry HTTP address");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(sock_registry::run(config, grpc, http, shutdown.clone()));
        Registry {
            grpc: grpc_addr,
            http: http_addr,
            shutdown,
            task: Some(task),
            _data: None,
        }
    }

    /// The URL of its gRPC API.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The base URL of its HTTP bundle store.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// A channel to its gRPC API, connected on first use.
    pub fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .expect("registry URL")
            .connect_lazy()
    }

    /// A client of its gRPC API that sends no token.
    pub fn client(&self) -> RegistryClient<Channel> {
        RegistryClient::new(self.channel())
    }

    /// Whether `run` has not returned: not stopped, and not failed.
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|task| !task.is_finished())
    }

    /// Stops it, waits until it has let go of its store, and fails the
    /// test unless it ran cleanly.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .expect("registry task")
                .expect("registry ran cleanly");
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
