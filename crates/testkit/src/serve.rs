//! A fake gRPC service served on a free loopback port for one test, and
//! an address where nothing is served.
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Router;

/// A service being served; dropped, it stops.
pub struct Served {
    endpoint: String,
    task: JoinHandle<()>,
}

impl Served {
    /// Its URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `router` on 127.0.0.1 at a free port.
pub async fn serve(router: Router) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let endpoint = format!("http://{}", listener.local_addr().expect("bound address"));
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .expect("the fake service serves");
    });
    Served { endpoint, task }
}

/// A loopback URL nothing listens on (until someone binds its port).
pub async fn closed_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{addr}")
}
