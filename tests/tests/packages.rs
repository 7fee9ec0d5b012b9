//! Functions with requirements, end to end: the cache installs packages
//! (its own pip, wheels only; source_builds.rs has sdists) from wheels the
//! tests build, offline, and sandboxes get the closure on `sys.path`; the
//! import-cache tree forks functions from a zygote that imported their package only
//! when the versions agree. `network_pypi_*` installs from the real PyPI.
use std::path::Path;

use sock_cli::tokens::Kind;
use sock_proto::ERROR_HEADER;
use sock_proto::v1::cache_client::CacheClient;
use sock_proto::v1::{ErrorKind, TreeRequest};
use sock_testkit::cluster::{Cluster, bin_dir, have_root, leftover_cgroups};
use sock_testkit::wheels::{module_wheel, wheel_dir};
use tonic::Code;

/// The first call installs with pip: give it room.
const FIRST_CALL_MS: u32 = 120_000;

/// ol.yaml of the test functions: a timeout long enough for installs.
const OL_YAML: &str = "limits:\n  timeout_ms: 120000\n";

async fn push(cluster: &Cluster, name: &str, requirements: &str, code: &str) {
    cluster
        .push(
            name,
            &[
                ("f.py", code),
                ("requirements.txt", requirements),
                ("ol.yaml", OL_YAML),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("push {name}: {e}"));
}

fn start(wheels: &Path, extra: &[(&str, &str)]) -> Cluster {
    let links = wheels.display().to_string();
    let mut env = vec![("SOCK_CACHE_FIND_LINKS", links.as_str())];
    env.extend_from_slice(extra);
    Cluster::start_with_env(&env)
}

fn stop(cluster: Cluster) {
    let instance = cluster.instance.clone();
    assert!(cluster.stop().success(), "sock up exits cleanly");
    assert_eq!(
        leftover_cgroups(&instance),
        Vec::<std::path::PathBuf>::new()
    );
}

/// A function that reports which `sockver` it imported, and whether the
/// module was already imported before its own file ran (a zygote did).
const SOCKVER_F: &str = "import sys\n\
PRELOADED = 'sockver' in sys.modules\n\
import sockver\n\
def f(event):\n    return {'version': sockver.VERSION, 'preloaded': PRELOADED}\n";

/// A wheel dir with sockver 2.1.0 and 2.2.0, each knowing its VERSION.
fn sockver_wheels() -> tempfile::TempDir {
    let wheels = wheel_dir();
    for version in ["2.1.0", "2.2.0"] {
        module_wheel(
            wheels.path(),
            "sockver",
            version,
            &[],
            &format!("VERSION = '{version}'\n"),
        );
    }
    wheels
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_gets_its_requirements_with_their_dependencies_and_a_second_reuses_them() {
    if !have_root() {
        return;
    }
    let wheels = wheel_dir();
    let alpha = module_wheel(
        wheels.path(),
        "sockalpha",
        "1.0",
        &["sockbeta>=1.0", "sockwin; sys_platform == \"win32\""],
        "from sockbeta import BETA\nALPHA = 'alpha-1.0+' + BETA\n",
    );
    let beta = module_wheel(wheels.path(), "sockbeta", "1.0", &[], "BETA = 'beta-1.0'\n");
    let cluster = start(wheels.path(), &[]);
    let code = "import sockalpha\ndef f(event):\n    return sockalpha.ALPHA\n";

    push(&cluster, "first", "sockalpha==1.0\n", code).await;
    assert_eq!(
        cluster
            .call_json("first", FIRST_CALL_MS)
            .await
            .expect("first call"),
        "alpha-1.0+beta-1.0",
        "the dependency from Requires-Dist is on sys.path too"
    );
    let store = cluster.data_dir().join("cache/packages");
    assert!(store.join("sockalpha==1.0/files/sockalpha.py").is_file());
    assert!(store.join("sockbeta==1.0/files/sockbeta.py").is_file());
    assert!(
        !store.join("sockwin==1.0").exists(),
        "a win32-only dependency is not installed"
    );

    // With the wheels gone, any pip run would fail: the second function
    // can only work by reusing the installs.
    std::fs::remove_file(alpha).expect("remove wheel");
    std::fs::remove_file(beta).expect("remove wheel");
    push(&cluster, "second", "sockalpha==1.0\n", code).await;
    assert_eq!(
        cluster
            .call_json("second", FIRST_CALL_MS)
            .await
            .expect("second call"),
        "alpha-1.0+beta-1.0"
    );
    stop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_versions_of_one_package_serve_two_functions_side_by_side() {
    if !have_root() {
        return;
    }
    let wheels = sockver_wheels();
    let cluster = start(wheels.path(), &[]);
    push(&cluster, "old", "sockver==2.1.0\n", SOCKVER_F).await;
    push(&cluster, "new", "sockver==2.2.0\n", SOCKVER_F).await;
    for _ in 0..2 {
        let old = cluster.call_json("old", FIRST_CALL_MS).await.expect("old");
        let new = cluster.call_json("new", FIRST_CALL_MS).await.expect("new");
        assert_eq!(old["version"], "2.1.0");
        assert_eq!(new["version"], "2.2.0");
    }
    stop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tree_forks_a_function_from_its_packages_zygote_only_for_the_same_version() {
    if !have_root() {
        return;
    }
    let wheels = sockver_wheels();
    let tree =
        r#"{"packages": [], "children": [{"packages": ["sockver==2.1.0"], "children": []}]}"#;
    let cluster = start(wheels.path(), &[("SOCK_CACHE_IMPORT_TREE", tree)]);
    push(&cluster, "match", "sockver==2.1.0\n", SOCKVER_F).await;
    push(&cluster, "other", "sockver==2.2.0\n", SOCKVER_F).await;

    let matched = cluster
        .call_json("match", FIRST_CALL_MS)
        .await
        .expect("match");
    assert_eq!(matched["version"], "2.1.0");
    assert_eq!(
        matched["preloaded"], true,
        "forked from the sockver==2.1.0 zygote, which imported it"
    );
    let other = cluster
        .call_json("other", FIRST_CALL_MS)
        .await
        .expect("other");
    assert_eq!(other["version"], "2.2.0");
    assert_eq!(
        other["preloaded"], false,
        "a function pinning another version must not get the zygote's"
    );
    stop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tree_node_gets_its_dependencies_and_serves_its_functions_from_its_zygote() {
    if !have_root() {
        return;
    }
    let wheels = wheel_dir();
    module_wheel(
        wheels.path(),
        "sockdepa",
        "1.0",
        &["sockdepb>=1.0"],
        "from sockdepb import B\nA = 'a-1.0+' + B\n",
    );
    module_wheel(wheels.path(), "sockdepb", "1.0", &[], "B = 'b-1.0'\n");
    // The node names only sockdepa: its zygote imports it, so sockdepb
    // must be on the zygote's path too.
    let tree = r#"{"packages": [], "children": [{"packages": ["sockdepa==1.0"], "children": []}]}"#;
    let cluster = start(wheels.path(), &[("SOCK_CACHE_IMPORT_TREE", tree)]);
    let code = "import sys\n\
PRELOADED = sorted(m for m in ('sockdepa', 'sockdepb') if m in sys.modules)\n\
import sockdepa\n\
def f(event):\n    return {'a': sockdepa.A, 'preloaded': PRELOADED}\n";
    push(&cluster, "uses-a", "sockdepa==1.0\n", code).await;
    let answer = cluster
        .call_json("uses-a", FIRST_CALL_MS)
        .await
        .expect("call");
    assert_eq!(answer["a"], "a-1.0+b-1.0");
    assert_eq!(
        answer["preloaded"],
        serde_json::json!(["sockdepa", "sockdepb"]),
        "forked from the node's zygote, which imported sockdepa and with it sockdepb"
    );
    let status = cluster.status().await;
    assert_eq!(status.zygote_start_failures_total, 0, "{status:?}");
    assert_eq!(
        (status.cold_starts_total, status.zygote_forks_total),
        (1, 1),
        "{status:?}"
    );
    let node = status
        .zygotes
        .iter()
        .find(|z| z.id == "root/sockdepa==1.0")
        .unwrap_or_else(|| panic!("the node's zygote lives: {status:?}"));
    assert_eq!(
        node.children, 1,
        "the call's sandbox is its child: {status:?}"
    );
    stop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_tree_configured_packages_two_functions_used_get_a_zygote_for_later_ones() {
    if !have_root() {
        return;
    }
    let wheels = wheel_dir();
    module_wheel(
        wheels.path(),
        "socklearnt",
        "1.0",
        &["socklearntdep>=1.0"],
        "import socklearntdep\n",
    );
    module_wheel(wheels.path(), "socklearntdep", "1.0", &[], "");
    let cluster = start(wheels.path(), &[("SOCK_CACHE_TREE_REBUILD_MS", "200")]);
    let code = "import sys\n\
PRELOADED = sorted(m for m in ('socklearnt', 'socklearntdep') if m in sys.modules)\n\
import socklearnt\n\
def f(event):\n    return {'preloaded': PRELOADED}\n";
    for name in ["learn-a", "learn-b"] {
        push(&cluster, name, "socklearnt==1.0\n", code).await;
        let answer = cluster.call_json(name, FIRST_CALL_MS).await.expect("call");
        assert_eq!(
            answer["preloaded"],
            serde_json::json!([]),
            "nothing learned yet"
        );
    }

    // Two cold starts needed the package: the next rebuild gives it a node.
    let node = "root/socklearnt==1.0,socklearntdep==1.0";
    let mut cache = CacheClient::new(
        cluster
            .authed(&cluster.endpoints.cache, sock_cli::tokens::Kind::Node)
            .await,
    );
    let started = std::time::Instant::now();
    loop {
        let tree = cache
            .tree(TreeRequest::default())
            .await
            .expect("tree")
            .into_inner();
        assert_eq!(tree.source, "learned");
        if tree.nodes.iter().any(|n| n.id == node) {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "no node learned: {tree:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    push(&cluster, "learn-c", "socklearnt==1.0\n", code).await;
    let answer = cluster
        .call_json("learn-c", FIRST_CALL_MS)
        .await
        .expect("call");
    assert_eq!(
        answer["preloaded"],
        serde_json::json!(["socklearnt", "socklearntdep"]),
        "a later function forks from the learned node's zygote"
    );
    let status = cluster.status().await;
    assert!(
        status
            .zygotes
            .iter()
            .any(|z| z.id == node && z.children == 1),
        "{status:?}"
    );
    assert_eq!(
        (status.cold_starts_total, status.zygote_forks_total),
        (3, 3),
        "{status:?}"
    );
    let tree = cache
        .tree(TreeRequest::default())
        .await
        .expect("tree")
        .into_inner();
    let chosen = tree.nodes.iter().find(|n| n.id == node).map(|n| n.chosen);
    assert_eq!(chosen, Some(1), "{tree:?}");
    stop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_install_names_the_package_and_is_retried_on_a_later_call() {
    if !have_root() {
        return;
    }
    let wheels = wheel_dir();
    let cluster = start(wheels.path(), &[]);
    push(
        &cluster,
        "needs",
        "socklater==1.0\n",
        "import socklater\ndef f(event):\n    return socklater.X\n",
    )
    .await;
    let status = cluster
        .call_json("needs", FIRST_CALL_MS)
        .await
        .expect_err("nothing to install");
    assert!(
        status.message().contains("socklater==1.0")
            && status.message().contains("failed to install"),
        "{status:?}"
    );
    assert!(
        status.message().contains("No matching distribution"),
        "pip's reason is passed on: {status:?}"
    );
    // One kind at every edge: gRPC's code and stamp, HTTP's status and
    // header, the CLI's exit code.
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        ErrorKind::stamped(&status),
        Some(ErrorKind::CannotStart),
        "{status:?}"
    );
    let response = reqwest::Client::new()
        .post(format!("{}/run/needs", cluster.endpoints.gateway_http))
        .bearer_auth(cluster.token(Kind::Invoke))
        .body("{}")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()[ERROR_HEADER], "cannot_start");
    let out = std::process::Command::new(bin_dir().join("sock"))
        .arg("--data-dir")
        .arg(cluster.data_dir())
        .args(["invoke", "needs", "{}"])
        .output()
        .expect("run sock");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("socklater==1.0"), "{stderr}");

    // Not remembered as failed: once the wheel is there, it installs.
    module_wheel(wheels.path(), "socklater", "1.0", &[], "X = 42\n");
    assert_eq!(
        cluster
            .call_json("needs", FIRST_CALL_MS)
            .await
            .expect("retried"),
        42
    );
    stop(cluster);
}

/// Needs PyPI: the cache's pip downloads six's wheel.
#[tokio::test(flavor = "multi_thread")]
async fn network_pypi_six_installs_and_imports() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start();
    push(
        &cluster,
        "sixer",
        "six==1.16.0\n",
        "import six\ndef f(event):\n    return six.__version__\n",
    )
    .await;
    assert_eq!(
        cluster
            .call_json("sixer", FIRST_CALL_MS)
            .await
            .expect("six from PyPI"),
        "1.16.0"
    );
    stop(cluster);
}
