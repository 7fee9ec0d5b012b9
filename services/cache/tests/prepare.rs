//! `Prepare` against the real registry, in-process, with a counting
//! reverse proxy between cache and registry so the tests see every HTTP
//! request the cache makes.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use sock_proto::v1::cache_client::CacheClient;
use sock_proto::v1::registry_client::RegistryClient;
use sock_proto::v1::{
    ErrorKind, FunctionRef, PrepareRequest, PrepareResponse, PushFunctionRequest,
};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// One HTTP request the cache made to the registry, as the proxy saw it.
#[derive(Clone, Debug)]
struct Exchange {
    path: String,
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
    status: u16,
    etag: Option<String>,
}

#[derive(Clone)]
struct ProxyState {
    /// Base URL of the registry's HTTP store.
    upstream: Arc<Mutex<String>>,
    http: reqwest::Client,
    arrived: watch::Sender<usize>,
    /// Requests wait here until it is true.
    open: watch::Receiver<bool>,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
    /// When set, replaces the body of 200 answers.
    corrupt_body: Arc<Mutex<Option<&'static [u8]>>>,
}

async fn forward(State(state): State<ProxyState>, request: Request) -> Response {
    state.arrived.send_modify(|n| *n += 1);
    let mut open = state.open.clone();
    open.wait_for(|open| *open).await.unwrap();

    let path = request.uri().path().to_string();
    let mut headers = request.headers().clone();
    headers.remove(http::header::HOST);
    let header = |name| {
        headers
            .get(name)
            .map(|v: &http::HeaderValue| v.to_str().unwrap().to_string())
    };
    let (if_none_match, if_modified_since) = (
        header(http::header::IF_NONE_MATCH),
        header(http::header::IF_MODIFIED_SINCE),
    );
    let base = state.upstream.lock().unwrap().clone();
    let upstream = state
        .http
        .get(format!("{base}{path}"))
        .headers(headers.clone())
        .send()
        .await;
    let Ok(upstream) = upstream else {
        return http::StatusCode::BAD_GATEWAY.into_response();
    };
    let status = upstream.status();
    let mut answer_headers = upstream.headers().clone();
    let mut body = upstream.bytes().await.unwrap();
    let replacement = *state.corrupt_body.lock().unwrap();
    if let (http::StatusCode::OK, Some(replacement)) = (status, replacement) {
        body = bytes::Bytes::from_static(replacement);
        answer_headers.remove(http::header::CONTENT_LENGTH);
    }
    state.exchanges.lock().unwrap().push(Exchange {
        path,
        if_none_match,
        if_modified_since,
        status: status.as_u16(),
        etag: answer_headers
            .get(http::header::ETAG)
            .map(|v| v.to_str().unwrap().to_string()),
    });
    (status, answer_headers, body).into_response()
}

/// A task serving until its token is cancelled; cancelled on drop too, so
/// a failing test leaves nothing running.
struct Server {
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Server {
    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A registry of the test's, and a client of it.
struct Registry {
    server: sock_testkit::registry::Registry,
    grpc: RegistryClient<Channel>,
}

async fn start_registry() -> Registry {
    let server = sock_testkit::registry::Registry::start().await;
    Registry {
        grpc: server.client(),
        server,
    }
}

struct Stack {
    registry: Registry,
    /// Where the proxy forwards to.
    upstream: Arc<Mutex<String>>,
    proxy: Server,
    cache: Server,
    client: CacheClient<Channel>,
    proxy_addr: String,
    arrived: watch::Receiver<usize>,
    open: watch::Sender<bool>,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
    corrupt_body: Arc<Mutex<Option<&'static [u8]>>>,
    cache_dir: TempDir,
    sources: TempDir,
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

fn spawn<F, E>(run: impl FnOnce(CancellationToken) -> F) -> Server
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Debug,
{
    let shutdown = CancellationToken::new();
    let future = run(shutdown.clone());
    let task = tokio::spawn(async move { future.await.expect("server failed") });
    Server {
        shutdown,
        task: Some(task),
    }
}

async fn start_cache(data_dir: &Path, registry_url: String) -> (Server, CacheClient<Channel>) {
    let listener = listener().await;
    let addr = listener.local_addr().unwrap();
    let config = sock_cache::Config {
        listen: addr.to_string(),
        registry_url,
        data_dir: data_dir.to_path_buf(),
        ..Default::default()
    };
    let server = spawn(|shutdown| sock_cache::run(config, listener, shutdown));
    let client = CacheClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (server, client)
}

impl Stack {
    async fn start() -> Stack {
        let registry = start_registry().await;
        let upstream = Arc::new(Mutex::new(registry.server.http_url()));

        let (arrived, arrived_rx) = watch::channel(0);
        let (open, open_rx) = watch::channel(true);
        let state = ProxyState {
            upstream: upstream.clone(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            arrived,
            open: open_rx,
            exchanges: Arc::default(),
            corrupt_body: Arc::default(),
        };
        let (exchanges, corrupt_body) = (state.exchanges.clone(), state.corrupt_body.clone());
        let proxy_listener = listener().await;
        let proxy_addr = format!("http://{}", proxy_listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(forward).with_state(state);
        let proxy = spawn(|shutdown| {
            axum::serve(proxy_listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .into_future()
        });

        let cache_dir = tempfile::tempdir().unwrap();
        let (cache, client) = start_cache(cache_dir.path(), proxy_addr.clone()).await;
        Stack {
            registry,
            upstream,
            proxy,
            cache,
            client,
            proxy_addr,
            arrived: arrived_rx,
            open,
            exchanges,
            corrupt_body,
            cache_dir,
            sources: tempfile::tempdir().unwrap(),
        }
    }

    /// Pushes a function whose `f.py` returns `marker`, with an ol.yaml
    /// environment; answers the version the registry gave it.
    async fn push(&mut self, name: &str, marker: &str) -> u64 {
        let dir = self.sources.path().join(format!("{name}-{marker}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f.py"), f_py(marker)).unwrap();
        std::fs::write(dir.join("ol.yaml"), "environment:\n  GREETING: hello\n").unwrap();
        let bundle = sock_bundle::pack(&dir).unwrap();
        let info = self
            .registry
            .grpc
            .push_function(PushFunctionRequest {
                name: name.into(),
                bundle,
            })
            .await
            .unwrap()
            .into_inner();
        info.version
    }

    async fn prepare(&self, name: &str, version: u64) -> Result<PrepareResponse, Status> {
        prepare(self.client.clone(), name, version).await
    }

    fn requests(&self) -> usize {
        *self.arrived.borrow()
    }

    fn exchanges(&self) -> Vec<Exchange> {
        self.exchanges.lock().unwrap().clone()
    }

    /// The registry goes away: nothing listens where the cache sends its
    /// requests any more.
    async fn stop_registry(&mut self) {
        self.proxy.stop().await;
        self.registry.server.stop().await;
    }

    /// Replaces the registry with a new, empty one, as when its data is
    /// lost: version numbers start again at 1.
    async fn reset_registry(&mut self) {
        self.registry.server.stop().await;
        self.registry = start_registry().await;
        *self.upstream.lock().unwrap() = self.registry.server.http_url();
    }

    /// Version directories of `name` on the cache's disk.
    fn versions_on_disk(&self, name: &str) -> BTreeSet<String> {
        let dir = self.cache_dir.path().join("code").join(name);
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_dir())
            .map(|e| e.file_name().into_string().unwrap())
            .collect()
    }

    /// Nothing half-unpacked is left in the cache's data dir.
    fn assert_no_staging_left(&self) {
        let left: Vec<_> = walk(self.cache_dir.path())
            .into_iter()
            .filter(|p| {
                let rel = p.strip_prefix(self.cache_dir.path()).unwrap();
                rel.starts_with("tmp") && rel != Path::new("tmp")
            })
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

async fn prepare(
    mut client: CacheClient<Channel>,
    name: &str,
    version: u64,
) -> Result<PrepareResponse, Status> {
    client
        .prepare(PrepareRequest {
            function: Some(FunctionRef {
                name: name.into(),
                version,
            }),
            ..PrepareRequest::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Fails instead of hanging when a bug makes `future` wait forever; a
/// bound, not a measurement.
async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .expect("waited 20 s for something that should not wait")
}

fn f_py(marker: &str) -> String {
    format!("def f(event):\n    return {marker:?}\n")
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

fn version_of(response: &PrepareResponse) -> u64 {
    response.function.as_ref().unwrap().version
}

fn read_code(response: &PrepareResponse) -> String {
    std::fs::read_to_string(Path::new(&response.code_dir).join("f.py")).unwrap()
}

#[tokio::test]
async fn first_prepare_unpacks_the_code_and_answers_its_config() {
    let mut stack = Stack::start().await;
    let version = stack.push("hello", "one").await;

    let prepared = stack.prepare("hello", version).await.unwrap();

    assert_eq!(
        prepared.function,
        Some(FunctionRef {
            name: "hello".into(),
            version
        })
    );
    let code_dir = Path::new(&prepared.code_dir);
    assert!(code_dir.is_absolute(), "{code_dir:?}");
    assert!(code_dir.starts_with(stack.cache_dir.path().canonicalize().unwrap()));
    assert_eq!(read_code(&prepared), f_py("one"));
    let config = prepared.config.unwrap();
    assert_eq!(
        config.environment.get("GREETING").map(String::as_str),
        Some("hello")
    );
    assert_eq!(config.entry_file, "f.py");
    assert!(prepared.package_dirs.is_empty());
    // Sandboxes read the code as another uid, through every level.
    for dir in [
        code_dir,
        code_dir.parent().unwrap(),
        code_dir.parent().unwrap().parent().unwrap(),
    ] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "{dir:?}");
    }
    stack.assert_no_staging_left();
}

#[tokio::test]
async fn version_zero_means_the_latest() {
    let mut stack = Stack::start().await;
    stack.push("hello", "one").await;
    let latest = stack.push("hello", "two").await;

    let prepared = stack.prepare("hello", 0).await.unwrap();

    assert_eq!(version_of(&prepared), latest);
    assert_eq!(read_code(&prepared), f_py("two"));
}

#[tokio::test]
async fn an_exact_version_is_never_asked_for_again() {
    let mut stack = Stack::start().await;
    let version = stack.push("hello", "one").await;

    let first = stack.prepare("hello", version).await.unwrap();
    let second = stack.prepare("hello", version).await.unwrap();

    assert_eq!(first, second);
    let exchanges = stack.exchanges();
    assert_eq!(exchanges.len(), 1, "{exchanges:?}");
    assert_eq!(
        exchanges[0].path,
        format!("/functions/hello/versions/{version}")
    );
    assert_eq!(exchanges[0].status, 200);
}

#[tokio::test]
async fn the_latest_is_asked_each_time_and_a_304_keeps_it_in_the_same_dir() {
    let mut stack = Stack::start().await;
    let version = stack.push("hello", "one").await;

    let first = stack.prepare("hello", 0).await.unwrap();
    let second = stack.prepare("hello", 0).await.unwrap();

    assert_eq!(first, second);
    assert_eq!(read_code(&second), f_py("one"));
    let exchanges = stack.exchanges();
    assert_eq!(exchanges.len(), 2, "{exchanges:?}");
    assert_eq!(exchanges[0].path, "/functions/hello");
    assert_eq!(exchanges[0].status, 200);
    assert_eq!(exchanges[0].if_none_match, None);
    assert_eq!(exchanges[1].status, 304, "{exchanges:?}");
    assert_eq!(exchanges[1].if_none_match, exchanges[0].etag);
    assert!(exchanges[1].if_modified_since.is_some(), "{exchanges:?}");
    assert_eq!(
        stack.versions_on_disk("hello"),
        BTreeSet::from([version.to_string()])
    );
}

#[tokio::test]
async fn a_new_push_is_the_latest_at_once() {
    let mut stack = Stack::start().await;
    let v1 = stack.push("hello", "one").await;
    let first = stack.prepare("hello", 0).await.unwrap();
    assert_eq!(version_of(&first), v1);
    let v2 = stack.push("hello", "two").await;

    let second = stack.prepare("hello", 0).await.unwrap();

    assert_eq!(version_of(&second), v2);
    assert_ne!(second.code_dir, first.code_dir);
    assert_eq!(read_code(&second), f_py("two"));
    // The previous version stays: a sandbox may still be running it.
    assert_eq!(read_code(&first), f_py("one"));
    stack.assert_no_staging_left();
}

#[tokio::test]
async fn asking_for_a_newer_version_fetches_it_and_an_older_one_is_not_asked_again() {
    let mut stack = Stack::start().await;
    let v1 = stack.push("hello", "one").await;
    stack.prepare("hello", v1).await.unwrap();
    let v2 = stack.push("hello", "two").await;

    // Whoever knows only v1 gets the cached v1 without a request…
    let cached = stack.prepare("hello", v1).await.unwrap();
    assert_eq!(version_of(&cached), v1);
    assert_eq!(stack.requests(), 1);

    // …and whoever knows v2 gets v2 at once.
    let newer = stack.prepare("hello", v2).await.unwrap();
    assert_eq!(version_of(&newer), v2);
    assert_eq!(read_code(&newer), f_py("two"));
    assert_eq!(stack.requests(), 2);
}

#[tokio::test]
async fn the_version_asked_is_served_after_newer_pushes_until_the_registry_drops_it() {
    let mut stack = Stack::start().await;
    let v1 = stack.push("hello", "one").await;
    let v2 = stack.push("hello", "two").await;

    // The cache learns of v2 first; a gateway that still knows v1 gets v1.
    assert_eq!(
        read_code(&stack.prepare("hello", v2).await.unwrap()),
        f_py("two")
    );
    let old = stack.prepare("hello", v1).await.unwrap();
    assert_eq!(version_of(&old), v1);
    assert_eq!(read_code(&old), f_py("one"));
    // Latest is still v2, and both stay on disk.
    assert_eq!(version_of(&stack.prepare("hello", 0).await.unwrap()), v2);
    assert_eq!(
        stack.versions_on_disk("hello"),
        BTreeSet::from([v1.to_string(), v2.to_string()])
    );

    // Two pushes later the registry keeps v2 and v3 only: v1 is not found,
    // as the registry says, so whoever resolved it resolves again.
    let v3 = stack.push("hello", "three").await;
    stack.prepare("hello", v3).await.unwrap();
    stack.push("hello", "four").await;
    assert_eq!(
        stack.versions_on_disk("hello"),
        BTreeSet::from([v2.to_string(), v3.to_string()])
    );
    let status = stack.prepare("hello", v1).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(
        status.message(),
        format!(
            "function 'hello' version {v1} is not available: function 'hello' has no version {v1} \
             here: the registry keeps the current version (4) and the one before it"
        )
    );
}

#[tokio::test]
async fn a_version_not_pushed_yet_is_not_found() {
    let mut stack = Stack::start().await;
    let version = stack.push("hello", "one").await;

    let status = stack.prepare("hello", version + 5).await.unwrap_err();

    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(
        ErrorKind::stamped(&status),
        Some(ErrorKind::NotFound),
        "{status:?}"
    );
    assert!(
        status.message().starts_with(&format!(
            "function 'hello' version {} is not available",
            version + 5
        )),
        "{status:?}"
    );
}

#[tokio::test]
async fn only_the_two_newest_versions_stay_on_disk() {
    let mut stack = Stack::start().await;
    for marker in ["one", "two", "three"] {
        let version = stack.push("hello", marker).await;
        stack.prepare("hello", version).await.unwrap();
    }

    assert_eq!(
        stack.versions_on_disk("hello"),
        BTreeSet::from(["2".to_string(), "3".to_string()])
    );
}

#[tokio::test]
async fn an_unknown_function_is_not_found() {
    let stack = Stack::start().await;

    let status = stack.prepare("nope", 1).await.unwrap_err();

    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status.message().contains("function 'nope' does not exist"),
        "{status:?}"
    );
}

#[tokio::test]
async fn an_invalid_name_is_refused_before_any_request() {
    let stack = Stack::start().await;

    for name in ["../etc", "Hel lo", ""] {
        let status = stack.prepare(name, 1).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
    }
    assert_eq!(stack.requests(), 0);
}

#[tokio::test]
async fn a_bundle_damaged_after_its_push_is_a_platform_error_and_leaves_nothing() {
    let mut stack = Stack::start().await;
    let version = stack.push("hello", "one").await;
    *stack.corrupt_body.lock().unwrap() = Some(b"this is not a gzip file");

    let status = stack.prepare("hello", version).await.unwrap_err();

    // The registry validated it at push: the caller did nothing wrong.
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        ErrorKind::stamped(&status),
        Some(ErrorKind::Platform),
        "{status:?}"
    );
    assert!(status.message().contains("gzip"), "{status:?}");
    assert!(!stack.cache_dir.path().join("code/hello/1").exists());
    stack.assert_no_staging_left();
}

#[tokio::test]
async fn with_the_registry_stopped_the_cached_copy_is_still_served() {
    let mut stack = Stack::start().await;
    let version = stack.push("hello", "one").await;
    stack.push("other", "one").await;
    let before = stack.prepare("hello", version).await.unwrap();

    stack.stop_registry().await;

    let after = stack.prepare("hello", version).await.unwrap();
    assert_eq!(after, before);
    let status = stack.prepare("other", 1).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().starts_with("registry unavailable: "),
        "{status:?}"
    );
    assert!(!status.message().contains(&stack.proxy_addr), "{status:?}");
}

#[tokio::test]
async fn a_restarted_cache_revalidates_its_copy_and_serves_it_without_the_registry() {
    let mut stack = Stack::start().await;
    let version = stack.push("hello", "one").await;
    let before = stack.prepare("hello", version).await.unwrap();
    stack.cache.stop().await;

    let (mut cache, client) = start_cache(stack.cache_dir.path(), stack.proxy_addr.clone()).await;
    // The exact version is on disk: no request at all.
    let exact = prepare(client.clone(), "hello", version).await.unwrap();
    assert_eq!(exact, before);
    assert_eq!(stack.exchanges().len(), 1);
    // The latest is revalidated.
    let revalidated = prepare(client.clone(), "hello", 0).await.unwrap();
    assert_eq!(revalidated, before);
    let last = stack.exchanges().pop().unwrap();
    assert_eq!(last.status, 304, "{last:?}");

    stack.stop_registry().await;
    cache.stop().await;
    let (_cache, client) = start_cache(stack.cache_dir.path(), stack.proxy_addr.clone()).await;
    let offline = prepare(client, "hello", version).await.unwrap();
    assert_eq!(offline, before);
}

#[tokio::test]
async fn concurrent_prepares_share_one_fetch_and_one_dir() {
    let mut stack = Stack::start().await;
    let version = stack.push("hello", "one").await;
    stack.open.send_replace(false);

    let calls: Vec<_> = (0..10)
        .map(|_| tokio::spawn(prepare(stack.client.clone(), "hello", version)))
        .collect();
    let mut arrived = stack.arrived.clone();
    bounded(arrived.wait_for(|n| *n >= 1)).await.unwrap();
    // Give a cache without single-flight the chance to send more requests
    // while the first one is held; none may arrive, and none may answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.requests(), 1);
    assert!(calls.iter().all(|c| !c.is_finished()));
    stack.open.send_replace(true);

    let mut dirs = BTreeSet::new();
    for call in calls {
        let prepared = call.await.unwrap().unwrap();
        assert_eq!(version_of(&prepared), version);
        dirs.insert(prepared.code_dir);
    }
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert_eq!(stack.requests(), 1);
    assert_eq!(
        stack.versions_on_disk("hello"),
        BTreeSet::from([version.to_string()])
    );
    stack.assert_no_staging_left();
}

#[tokio::test]
async fn different_functions_do_not_wait_on_each_other() {
    let mut stack = Stack::start().await;
    let v = stack.push("slow", "one").await;
    stack.push("fast", "one").await;
    // Warm "fast" first, then hold every registry request: a prepare of
    // "slow" now hangs in its fetch.
    stack.prepare("fast", 1).await.unwrap();
    stack.open.send_replace(false);
    let slow = tokio::spawn(prepare(stack.client.clone(), "slow", v));
    let mut arrived = stack.arrived.clone();
    bounded(arrived.wait_for(|n| *n >= 2)).await.unwrap();

    let fast = bounded(stack.prepare("fast", 1)).await.unwrap();

    assert_eq!(fast.function.unwrap().name, "fast");
    assert!(!slow.is_finished());
    stack.open.send_replace(true);
    slow.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_fetch_outlives_a_caller_that_gave_up() {
    let mut stack = Stack::start().await;
    let version = stack.push("hello", "one").await;
    stack.open.send_replace(false);

    // The server drops this call at its deadline while the fetch is held.
    let mut request = tonic::Request::new(PrepareRequest {
        function: Some(FunctionRef {
            name: "hello".into(),
            version,
        }),
        ..PrepareRequest::default()
    });
    request.set_timeout(Duration::from_millis(300));
    let status = bounded(stack.client.clone().prepare(request))
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    stack.open.send_replace(true);

    let prepared = bounded(stack.prepare("hello", version)).await.unwrap();
    assert_eq!(read_code(&prepared), f_py("one"));
    assert_eq!(stack.requests(), 1);
    stack.assert_no_staging_left();
}

#[tokio::test]
async fn a_reset_registry_reuses_an_identical_copy_and_replaces_a_different_one() {
    let mut stack = Stack::start().await;
    stack.push("hello", "one").await;
    let first = stack.prepare("hello", 0).await.unwrap();
    stack.push("hello", "two").await;
    stack.prepare("hello", 0).await.unwrap();
    let first_inode = std::fs::metadata(&first.code_dir).unwrap().ino();

    // Same bytes as version 1 had: the copy on disk is used as it is.
    stack.reset_registry().await;
    assert_eq!(stack.push("hello", "one").await, 1);
    let reused = stack.prepare("hello", 0).await.unwrap();
    assert_eq!(reused, first);
    assert_eq!(
        std::fs::metadata(&reused.code_dir).unwrap().ino(),
        first_inode
    );

    // Other bytes under version 1: the stale copy is replaced, never served.
    stack.reset_registry().await;
    assert_eq!(stack.push("hello", "uno").await, 1);
    let replaced = stack.prepare("hello", 0).await.unwrap();
    assert_eq!(version_of(&replaced), 1);
    assert_eq!(replaced.code_dir, first.code_dir);
    assert_eq!(read_code(&replaced), f_py("uno"));
    stack.assert_no_staging_left();
}

#[tokio::test]
async fn a_registry_url_that_is_not_http_stops_the_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = sock_cache::Config {
        registry_url: "https://registry.example".into(),
        data_dir: data_dir.path().to_path_buf(),
        ..Default::default()
    };

    let err = sock_cache::run(config, listener().await, CancellationToken::new())
        .await
        .unwrap_err();

    assert_eq!(
        err.to_string(),
        "invalid registry_url 'https://registry.example': only http:// URLs are supported"
    );
}
