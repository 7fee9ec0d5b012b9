//! The registry's data dir fills up. Pushes that would leave less than
//! `min_free_mb` are refused before anything is written, with a clear,
//! typed error; the registry keeps serving every function it had, and once
//! there is room again pushes work, on the same process and after a
//! restart. A disk that runs out of files (inodes) before bytes is
//! refused the same way: sled, whose blob file met ENOSPC there, hung the
//! registry before the check counted files. The cache's data dir filling
//! up fails a `Prepare` saying so, leaves nothing half-unpacked, and the
//! same function prepares once there is room. Each data dir is a small
//! tmpfs the test mounts (root), unmounted by a guard even when the test
//! fails.
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::signal::Signal;
use sock_proto::v1::cache_client::CacheClient;
use sock_proto::v1::registry_client::RegistryClient;
use sock_proto::v1::{
    ErrorKind, FunctionRef, GetFunctionRequest, PrepareRequest, PushFunctionRequest,
};
use sock_testkit::cluster::have_root;
use sock_testkit::process::{self, Process, free_addr};
use tonic::transport::Channel;

/// A tmpfs mounted for this test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `options`: tmpfs's, as `size=8m` or `nr_inodes=16`.
    fn mount(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("{options},mode=0700").as_str()),
        )
        .expect("mount a tmpfs");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, options: &str) {
        mount(
            Some("tmpfs"),
            self.dir.path(),
            Some("tmpfs"),
            MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options),
        )
        .expect("resize the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
    }
}

struct Registry {
    process: Process,
    client: RegistryClient<Channel>,
    http: String,
}

async fn start(data_dir: PathBuf, min_free_mb: u64) -> Registry {
    let (grpc, http) = (free_addr(), free_addr());
    let env = [("SOCK_REGISTRY_MIN_FREE_MB", min_free_mb.to_string())];
    let process = process::registry(&data_dir, &grpc, &http, &env).await;
    let url = format!("http://{grpc}");
    let client = RegistryClient::new(Channel::from_shared(url).expect("url").connect_lazy())
        .max_encoding_message_size(64 << 20);
    Registry {
        process,
        client,
        http,
    }
}

/// A bundle of about `kb` KiB that gzip cannot shrink.
fn bundle(seed: u64, kb: usize) -> Vec<u8> {
    sock_testkit::functions::bundle(&[
        ("f.py", &format!("def f(event):\n    return {seed}\n")),
        (
            "filler.txt",
            &sock_testkit::functions::incompressible(seed, kb << 10),
        ),
    ])
}

async fn push(registry: &mut Registry, name: &str, bundle: Vec<u8>) -> Result<u64, tonic::Status> {
    registry
        .client
        .push_function(PushFunctionRequest {
            name: name.into(),
            bundle,
        })
        .await
        .map(|info| info.into_inner().version)
}

/// The latest bundle of `name`, as the registry's HTTP store serves it.
async fn served(registry: &Registry, name: &str) -> Vec<u8> {
    process::bundle_at(&registry.http, &format!("/functions/{name}"))
        .await
        .1
}

/// Pushes distinct functions of `kb` KiB until one is refused: what was
/// stored (name, bundle) and the refusal, checked to be the registry's
/// typed "disk is full" naming `limit` (what ran out).
async fn fill(registry: &mut Registry, kb: usize, limit: &str) -> Vec<(String, Vec<u8>)> {
    let mut kept = Vec::new();
    let refusal = loop {
        let name = format!("f{}", kept.len());
        let sent = bundle(kept.len() as u64, kb);
        match push(registry, &name, sent.clone()).await {
            Ok(_) => kept.push((name, sent)),
            Err(status) => break status,
        }
        assert!(kept.len() < 200, "the disk took 200 pushes");
    };
    assert!(!kept.is_empty(), "nothing fitted: {refusal:?}");
    assert_eq!(
        ErrorKind::stamped(&refusal),
        Some(ErrorKind::Platform),
        "{refusal:?}"
    );
    assert!(
        refusal.message().starts_with("the registry's disk is full")
            && refusal.message().contains(limit),
        "the refusal says the disk is full and what ran out ({limit}): {refusal:?}"
    );
    kept
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_registry_disk_refuses_pushes_clearly_and_loses_nothing() {
    if !have_root() {
        return;
    }
    let disk = Tmpfs::mount("size=8m");
    let mut registry = start(disk.path().join("registry"), 1).await;

    // Fill it with functions of 512 KiB.
    let kept = fill(&mut registry, 512, "min_free_mb").await;

    // Everything pushed before serves, from the same process.
    for (name, sent) in &kept {
        let info = registry
            .client
            .get_function(GetFunctionRequest { name: name.clone() })
            .await
            .expect("a function pushed before the disk filled")
            .into_inner();
        assert_eq!(info.version, 1);
        assert!(served(&registry, name).await == *sent, "{name} changed");
    }

    // Room again: the same process takes pushes.
    disk.resize("size=64m");
    let after = bundle(1000, 512);
    push(&mut registry, "after", after.clone())
        .await
        .expect("a push once there is room");

    // And a restart finds everything.
    registry.process.stop(Signal::SIGTERM);
    let registry = start(disk.path().join("registry"), 1).await;
    for (name, sent) in kept.iter().chain([&("after".to_string(), after)]) {
        assert!(
            served(&registry, name).await == *sent,
            "{name} after a restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_out_of_inodes_refuses_pushes_clearly_and_loses_nothing() {
    if !have_root() {
        return;
    }
    // Space, but few files.
    let disk = Tmpfs::mount("size=64m,nr_inodes=96");
    let mut registry = start(disk.path().join("registry"), 1).await;
    let kept = fill(&mut registry, 256, "64 files").await;
    for (name, sent) in &kept {
        assert!(
            served(&registry, name).await == *sent,
            "{name} after the refusal"
        );
    }

    disk.resize("nr_inodes=4096");
    let after = bundle(1000, 256);
    push(&mut registry, "after", after.clone())
        .await
        .expect("a push once there is room");
    assert!(served(&registry, "after").await == after);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_cache_disk_fails_prepare_clearly_and_leaves_nothing_half_done() {
    if !have_root() {
        return;
    }
    let registry = sock_testkit::registry::Registry::start().await;
    let mut pushing = registry.client().max_encoding_message_size(64 << 20);
    for (name, kb) in [("small", 16), ("big", 3 * 1024)] {
        pushing
            .push_function(PushFunctionRequest {
                name: name.into(),
                bundle: bundle(kb as u64, kb),
            })
            .await
            .expect("push");
    }
    let disk = Tmpfs::mount("size=2m");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let config = sock_cache::Config {
        listen: addr.to_string(),
        registry_url: registry.http_url(),
        data_dir: disk.path().to_path_buf(),
        ..Default::default()
    };
    tokio::spawn(sock_cache::run(config, listener, shutdown.clone()));
    let mut cache = CacheClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect_lazy(),
    )
    .max_decoding_message_size(64 << 20);
    let prepare = |name: &str| PrepareRequest {
        function: Some(FunctionRef {
            name: name.into(),
            version: 1,
        }),
        ..PrepareRequest::default()
    };

    cache.prepare(prepare("small")).await.expect("small fits");
    let refusal = cache
        .prepare(prepare("big"))
        .await
        .expect_err("3 MiB do not fit on a 2 MiB disk");
    assert_eq!(
        ErrorKind::stamped(&refusal),
        Some(ErrorKind::Platform),
        "{refusal:?}"
    );
    assert!(
        refusal
            .message()
            .starts_with("the code cache's disk is full"),
        "{refusal:?}"
    );
    let staging: Vec<_> = std::fs::read_dir(disk.path().join("tmp"))
        .expect("the cache's staging dir")
        .collect();
    assert!(staging.is_empty(), "left half-unpacked: {staging:?}");
    assert!(!disk.path().join("code/big").join("1").exists());
    cache
        .prepare(prepare("small"))
        .await
        .expect("what was prepared before still serves");

    disk.resize("size=64m");
    cache
        .prepare(prepare("big"))
        .await
        .expect("the same function prepares once there is room");
}
