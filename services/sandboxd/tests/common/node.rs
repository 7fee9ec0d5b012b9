//! A sandboxd node for one test: its dir, a fake cache
//! (`sock_testkit::fake_cache`) whose catalog the test writes, sandboxd in
//! this process (or, for a test that kills it, a process the test runs),
//! and the checks that it left nothing behind.
//!
//! The tests that run a node declare this file with `#[path]`; common/mod.rs
//! does not, so that the tests that run none do not compile it unused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sock_proto::v1::sandboxd_client::SandboxdClient;
use sock_proto::v1::{FunctionRef, SandboxInvokeRequest, StatusRequest, StatusResponse};
use sock_sandboxd::Config;
use sock_service::limits::Carrying;
use sock_testkit::fake_cache::{self, Catalog, Function};
use sock_testkit::serve::Served;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// One test's node; dropped, it stops its sandboxd and removes what that
/// left behind.
pub struct Node {
    pub dir: tempfile::TempDir,
    /// What sandboxd runs with; a test that runs the binary passes it on.
    pub config: Config,
    pub catalog: Arc<Catalog>,
    pub client: SandboxdClient<Channel>,
    /// Cancelled: the sandboxd in this process shuts down.
    pub shutdown: CancellationToken,
    served: Option<tokio::task::JoinHandle<Result<(), sock_sandboxd::StartError>>>,
    _cache: Served,
    /// Dropped last: what a failed test's sandboxd had no time to destroy.
    _instance: crate::common::Instance,
}

impl Drop for Node {
    /// A failed test still stops its sandboxd; a panic may end the runtime
    /// before sandboxd has destroyed everything, so `_instance` goes next.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A node with its dir, fake cache and config (`tune` applied) but no
/// sandboxd yet; `None` where the test may not run (see `have_root`).
pub async fn set_up(test: &str, tune: impl FnOnce(&mut Config)) -> Option<Node> {
    if !crate::common::have_root() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let instance = crate::common::Instance::new(test);
    let catalog = Arc::new(Catalog::default());
    let cache = fake_cache::serve(dir.path().join("code"), catalog.clone()).await;
    let mut config = Config {
        listen: format!("unix:{}", dir.path().join("sandboxd.sock").display()),
        cache_addr: cache.endpoint().to_string(),
        data_dir: dir.path().join("data"),
        // The fake cache answers dirs below the test's dir.
        cache_data_dir: dir.path().to_path_buf(),
        instance: instance.name().to_string(),
        shutdown_grace_ms: 100,
        init_program: Some(env!("CARGO_BIN_EXE_sock-sandboxd").into()),
        // A test starts a few sandboxes: no need to make many spares.
        cgroup_pool_size: 4,
        netns_pool_size: 2,
        ..Config::default()
    };
    tune(&mut config);
    let client = SandboxdClient::new(
        tonic::transport::Endpoint::from_shared(config.listen.clone())
            .expect("endpoint")
            .connect_lazy(),
    )
    .carrying(sock_service::limits::MAX_CALL_BYTES);
    Some(Node {
        dir,
        _instance: instance,
        config,
        catalog,
        client,
        shutdown: CancellationToken::new(),
        served: None,
        _cache: cache,
    })
}

/// A node with sandboxd running in this process, its config changed by
/// `tune`.
pub async fn start(test: &str, tune: impl FnOnce(&mut Config)) -> Option<Node> {
    let mut node = set_up(test, tune).await?;
    let listener = sock_sandboxd::bind(&node.config)
        .await
        .expect("bind sandboxd");
    node.served = Some(tokio::spawn(sock_sandboxd::run(
        node.config.clone(),
        listener,
        node.shutdown.clone(),
    )));
    Some(node)
}

/// A call of version `version` of `name`.
pub fn request(
    name: &str,
    version: u64,
    call_id: &str,
    payload: impl Into<Vec<u8>>,
    timeout_ms: u32,
) -> SandboxInvokeRequest {
    SandboxInvokeRequest {
        function: Some(FunctionRef {
            name: name.into(),
            version,
        }),
        payload: payload.into(),
        call_id: call_id.into(),
        timeout_ms,
        ..SandboxInvokeRequest::default()
    }
}

impl Node {
    /// Where `publish` writes version `version` of `name`'s code.
    pub fn code_dir(&self, name: &str, version: u64) -> PathBuf {
        fake_cache::code_dir(&self.dir.path().join("code"), name, version)
    }

    /// Publishes `source` as the entry file (`f.py` unless the config names
    /// another) of version `version` of `name`: the cache now prepares it.
    pub fn publish(&self, name: &str, version: u64, source: &str, function: Function) {
        let code = self.code_dir(name, version);
        std::fs::create_dir_all(&code).expect("mkdir code");
        let entry = match function.config.entry_file.as_str() {
            "" => "f.py",
            entry => entry,
        };
        std::fs::write(code.join(entry), source).expect("write the entry file");
        self.catalog.publish(name, version, function);
    }

    pub async fn status(&self) -> StatusResponse {
        self.client
            .clone()
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }

    /// Stops the sandboxd in this process and checks that nothing of it
    /// remains.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let served = self.served.take().expect("started, and stopped once");
        tokio::time::timeout(Duration::from_secs(60), served)
            .await
            .expect("sandboxd stops")
            .expect("run task")
            .expect("run returns Ok");
        assert_nothing_left(&self.config.instance, &self.config.data_dir);
    }
}

/// Checks that sandboxd instance `instance` left no cgroup, and no mount
/// under its data dir.
pub fn assert_nothing_left(instance: &str, data_dir: &Path) {
    crate::common::assert_no_cgroups(instance);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let data_dir = data_dir.display().to_string();
    assert!(
        !mounts.contains(&data_dir),
        "mounts under {data_dir} were left behind"
    );
}
