//! Packages with only an sdist, end to end through `sock up`: refused by
//! default; with `allow_source_builds` built by sandboxd in a sandbox with
//! no network. The sdists are hostile: their build backend tries every
//! port of the cluster, the cloud metadata address and a listener of the
//! test's own, and records what happened in the wheel it builds.
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use sock_testkit::cluster::{Cluster, have_root, leftover_cgroups};
use sock_testkit::wheels::{sdist, wheel_dir};

/// A build and an install before the first answer.
const FIRST_CALL_MS: u32 = 180_000;
const OL_YAML: &str = "limits:\n  timeout_ms: 180000\n";

/// `build_wheel` tries TCP to each of `TARGETS` (filled in by the test),
/// then writes a wheel whose module `sockprobe_result` holds the outcomes
/// (`connected` or the errno's name). With `PLANT` set it also puts a
/// symlink to that host path where pip will copy the wheel in `/out`.
const BACKEND: &str = r#"
import base64, errno, hashlib, json, os, socket, zipfile

NAME = "sockprobe"
VERSION = "1.0"
TARGETS = __TARGETS__
PLANT = __PLANT__

def _probe(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        return "connected"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    probes = {f"{host}:{port}": _probe(host, port) for host, port in TARGETS}
    info = f"{NAME}-{VERSION}.dist-info"
    files = {
        "sockprobe_result.py": "PROBES = " + json.dumps(probes) + "\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: sock-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as whl:
        for path, text in files.items():
            whl.writestr(path, text)
    if PLANT:
        # pip copies the wheel to /out/<name> afterwards, through this link.
        os.symlink(PLANT, os.path.join("/out", name))
    return name
"#;

const PROBE_F: &str =
    "import sockprobe_result\ndef f(event):\n    return sockprobe_result.PROBES\n";

/// `host:port` of every TCP endpoint of the cluster (unix sockets are not
/// in the build's root at all).
fn cluster_ports(cluster: &Cluster) -> Vec<(String, u16)> {
    let e = &cluster.endpoints;
    [
        &e.gateway,
        &e.gateway_http,
        &e.registry,
        &e.registry_http,
        &e.cache,
        &e.sandboxd,
        &e.registry_metrics,
        &e.cache_metrics,
        &e.sandboxd_metrics,
    ]
    .into_iter()
    .filter_map(|url| {
        let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        let authority = rest.split('/').next()?;
        let (host, port) = authority.rsplit_once(':')?;
        Some((host.to_string(), port.parse().ok()?))
    })
    .collect()
}

fn backend(targets: &[(String, u16)], plant: Option<&Path>) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|(host, port)| format!("({host:?}, {port})"))
        .collect();
    let plant = plant.map_or("None".to_string(), |p| {
        format!("{:?}", p.display().to_string())
    });
    BACKEND
        .replace("__TARGETS__", &format!("[{}]", targets.join(", ")))
        .replace("__PLANT__", &plant)
}

/// A listener of the test's own on loopback; says whether anything
/// connected to it.
struct Witness {
    listener: TcpListener,
}

impl Witness {
    fn new() -> Witness {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the witness");
        listener.set_nonblocking(true).expect("nonblocking witness");
        Witness { listener }
    }

    fn target(&self) -> (String, u16) {
        let port = self.listener.local_addr().expect("witness addr").port();
        ("127.0.0.1".into(), port)
    }

    fn accepted_nothing(&self) -> bool {
        matches!(self.listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

async fn push(cluster: &Cluster, name: &str) {
    cluster
        .push(
            name,
            &[
                ("f.py", PROBE_F),
                ("requirements.txt", "sockprobe==1.0\n"),
                ("ol.yaml", OL_YAML),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("push {name}: {e}"));
}

fn start(sdists: &Path, allow: bool) -> Cluster {
    let links = sdists.display().to_string();
    let allow = allow.to_string();
    Cluster::start_with_env(&[
        ("SOCK_CACHE_FIND_LINKS", links.as_str()),
        ("SOCK_CACHE_ALLOW_SOURCE_BUILDS", allow.as_str()),
    ])
}

fn stop(cluster: Cluster) {
    let instance = cluster.instance.clone();
    assert!(cluster.stop().success(), "sock up exits cleanly");
    assert_eq!(
        leftover_cgroups(&instance),
        Vec::<std::path::PathBuf>::new()
    );
}

/// The cluster's ports and the test's listener are known only once both
/// are up, so the sdist is written after the start (the cache looks in
/// find_links at the first call).
fn write_sdist(dir: &Path, targets: &[(String, u16)], plant: Option<&Path>) {
    sdist(dir, "sockprobe", "1.0", &backend(targets, plant));
}

fn all_targets(cluster: &Cluster, witness: &Witness) -> Vec<(String, u16)> {
    let mut targets = cluster_ports(cluster);
    assert!(
        targets.len() >= 6,
        "every TCP port of the cluster: {targets:?}"
    );
    targets.push(("169.254.169.254".into(), 80));
    targets.push(witness.target());
    targets
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sdist_only_package_is_refused_by_default_and_its_code_never_runs() {
    if !have_root() {
        return;
    }
    let sdists = wheel_dir();
    let witness = Witness::new();
    let cluster = start(sdists.path(), false);
    write_sdist(sdists.path(), &all_targets(&cluster, &witness), None);
    push(&cluster, "probe").await;

    let status = cluster
        .call_json("probe", FIRST_CALL_MS)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains(
            "package 'sockprobe==1.0' has no wheel for this platform, and source builds are off (the operator can allow them with allow_source_builds)"
        ),
        "{status:?}"
    );
    assert!(
        status.message().contains("No matching distribution"),
        "pip's tail is passed on: {status:?}"
    );
    assert!(witness.accepted_nothing(), "the backend ran");
    stop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_source_builds_allowed_the_build_runs_with_no_route_anywhere() {
    if !have_root() {
        return;
    }
    let sdists = wheel_dir();
    let witness = Witness::new();
    let cluster = start(sdists.path(), true);
    let targets = all_targets(&cluster, &witness);
    write_sdist(sdists.path(), &targets, None);
    push(&cluster, "probe").await;

    // Concurrent first calls: one build (the others wait for it), every
    // call answered.
    let (first, second, third) = tokio::join!(
        cluster.call_json("probe", FIRST_CALL_MS),
        cluster.call_json("probe", FIRST_CALL_MS),
        cluster.call_json("probe", FIRST_CALL_MS)
    );
    let probes = first.expect("built and imported");
    assert_eq!(second.expect("second call"), probes);
    assert_eq!(third.expect("third call"), probes);
    let probes = probes.as_object().expect("a map of probes");
    assert_eq!(probes.len(), targets.len(), "{probes:?}");
    for (target, outcome) in probes {
        let outcome = outcome.as_str().expect("an outcome");
        // Loopback of its own empty netns refuses; anything else has no
        // route.
        let expected = match target.starts_with("169.254.") {
            true => "ENETUNREACH",
            false => "ECONNREFUSED",
        };
        assert_eq!(outcome, expected, "{target}: {probes:?}");
    }
    // Give a late connection time to show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(witness.accepted_nothing(), "the build reached the host");

    // Installed once: a second function reuses the built package.
    push(&cluster, "probe2").await;
    assert_eq!(
        cluster
            .call_json("probe2", FIRST_CALL_MS)
            .await
            .expect("reused"),
        serde_json::Value::Object(probes.clone())
    );
    stop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_symlink_the_build_leaves_in_its_output_is_never_followed() {
    if !have_root() {
        return;
    }
    // Directly in /tmp, which the build's root has too (its own tmpfs), so
    // pip's copy through the link succeeds there and the build "works".
    let secret_file = tempfile::Builder::new()
        .prefix("sock-secret-")
        .tempfile_in("/tmp")
        .expect("secret file");
    let secret = secret_file.path().to_path_buf();
    std::fs::write(&secret, "not a wheel: root must not read this").expect("write secret");
    let sdists = wheel_dir();
    let cluster = start(sdists.path(), true);
    // No probes; the backend leaves /out/<wheel> -> the secret.
    write_sdist(sdists.path(), &[], Some(&secret));
    push(&cluster, "planted").await;

    let status = cluster
        .call_json("planted", FIRST_CALL_MS)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains(
            "function 'planted' cannot start: package 'sockprobe==1.0' failed to build from source: the build's sockprobe-1.0-py3-none-any.whl cannot be opened as a plain file"
        ),
        "{status:?}"
    );
    assert!(
        !status.message().contains("root must not read"),
        "{status:?}"
    );
    // The output dir is gone, symlink and all; the secret is untouched.
    let builds = cluster.data_dir().join("sandboxd/builds");
    let left: Vec<_> = std::fs::read_dir(&builds)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "build dirs left: {left:?}");
    assert_eq!(
        std::fs::read_to_string(&secret).expect("secret kept"),
        "not a wheel: root must not read this"
    );
    stop(cluster);
}
