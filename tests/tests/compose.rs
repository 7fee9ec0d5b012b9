//! sock as deployed: the Kubernetes manifests and compose files wire the
//! services with config keys the services really have, and the compose
//! stack (image from host-built binaries, two nodes) makes its tokens,
//! refuses callers without them, answers calls end to end (a Flask app
//! with requirements too, on either node), exports one trace per call,
//! and `down -v` leaves nothing behind.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml::Value;
use sock_proto::v1::gateway_client::GatewayClient;
use sock_proto::v1::invoke_response::Outcome;
use sock_proto::v1::registry_client::RegistryClient;
use sock_proto::v1::{InvokeRequest, PushFunctionRequest};
use sock_testkit::cluster::{Authed, have_root, leftover_cgroups};
use sock_testkit::functions::example;
use sock_testkit::otlp::{OtlpReceiver, Span};
use sock_testkit::wheels::pypi_wheels;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;

const SERVICES: [&str; 4] = ["gateway", "registry", "cache", "sandboxd"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// The config keys of a service: the fields of its `Config`.
fn config_keys(service: &str) -> BTreeSet<String> {
    let value = match service {
        "gateway" => serde_json::to_value(sock_gateway::Config::default()),
        "registry" => serde_json::to_value(sock_registry::Config::default()),
        "cache" => serde_json::to_value(sock_cache::Config::default()),
        "sandboxd" => serde_json::to_value(sock_sandboxd::Config::default()),
        other => panic!("no sock service is called '{other}'"),
    }
    .expect("configs serialize");
    value
        .as_object()
        .expect("a config is a struct")
        .keys()
        .cloned()
        .collect()
}

/// `SOCK_<SERVICE>_<KEY>` → (service, key), for the four services; also
/// `SOCK_<SERVICE>_<KEY>_FILE`, which gives the key the contents of a file.
fn config_env(name: &str) -> Option<(&'static str, String)> {
    let rest = name.strip_prefix("SOCK_")?;
    let rest = rest.strip_suffix("_FILE").unwrap_or(rest);
    SERVICES.iter().find_map(|service| {
        let key = rest.strip_prefix(&format!("{}_", service.to_ascii_uppercase()))?;
        Some((*service, key.to_ascii_lowercase()))
    })
}

/// `SOCK_<SERVICE>_<KIND>_TOKEN[_FILE]` → the kind (`admin`, `invoke`,
/// `node`).
fn token_kind(name: &str) -> Option<String> {
    let (_, key) = config_env(name)?;
    key.strip_suffix("_token").map(str::to_string)
}

/// The tokens a service needs wherever it is deployed: those it asks of
/// its callers and those it shows to the services it calls.
fn needed_tokens(service: &str) -> &'static [&'static str] {
    match service {
        "registry" => &["admin", "node"],
        "gateway" => &["invoke", "admin", "node"],
        _ => &["node"],
    }
}

/// The uid and gid of the image's `sock` user (deploy/image-setup.sh), which
/// the registry, cache and gateway run as.
fn image_user() -> (String, String) {
    let setup = std::fs::read_to_string(repo().join("deploy/image-setup.sh"))
        .expect("read deploy/image-setup.sh");
    let id = |command: &str, flag: &str| -> String {
        setup
            .lines()
            .find(|l| l.trim_start().starts_with(command))
            .and_then(|l| l.split(flag).nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("image-setup.sh: no '{command} {flag} N'"))
            .to_string()
    };
    (id("useradd", "--uid"), id("groupadd", "--gid"))
}

/// `sock-gateway` → `gateway`.
fn service_of_binary(command: &Value) -> Option<&'static str> {
    let binary = command.as_sequence()?.first()?.as_str()?;
    let service = binary.strip_prefix("sock-")?;
    SERVICES.iter().copied().find(|s| *s == service)
}

/// The port of `host:port`, `http://host:port` or `0.0.0.0:port`.
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("'{addr}' has no port"))
}

/// The host of `http://host:port`.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.rsplit_once(':').map_or(rest, |(host, _)| host)
}

// ---------------------------------------------------------------------
// Kubernetes manifests
// ---------------------------------------------------------------------

struct Manifests {
    docs: Vec<(String, Value)>,
}

impl Manifests {
    fn load() -> Manifests {
        let dir = repo().join("deploy/k8s");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("deploy/k8s exists")
            .map(|e| e.expect("read deploy/k8s").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        let mut docs = Vec::new();
        for path in files {
            let file = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .to_string();
            let text = std::fs::read_to_string(&path).expect("read manifest");
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = <Value as serde::Deserialize>::deserialize(doc)
                    .unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
                if !value.is_null() {
                    docs.push((file.clone(), value));
                }
            }
        }
        Manifests { docs }
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.docs
            .iter()
            .map(|(_, d)| d)
            .filter(move |d| d["kind"] == kind)
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .map(|(_, d)| d)
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} named {name}"))
    }

    /// Deployments, StatefulSets and DaemonSets.
    fn workloads(&self) -> impl Iterator<Item = &Value> {
        self.docs.iter().map(|(_, d)| d).filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some("Deployment" | "StatefulSet" | "DaemonSet")
            )
        })
    }

    /// The container of a sock service, and the pod spec it runs in.
    fn container(&self, service: &str) -> (&Value, &Value) {
        self.workloads()
            .map(|w| &w["spec"]["template"]["spec"])
            .find_map(|pod| {
                let c = seq(&pod["containers"])
                    .iter()
                    .find(|c| service_of_binary(&c["command"]) == Some(service))?;
                Some((c, pod))
            })
            .unwrap_or_else(|| panic!("no container runs sock-{service}"))
    }

    /// Follows `http://host:port` through a Service to the container that
    /// answers it (the Service's selector matches the pod's labels, its
    /// target port is a port of that container): the sock service and the
    /// container port.
    fn reaches(&self, url: &str) -> (&'static str, u64) {
        let (host, port) = (host_of(url), u64::from(port_of(url)));
        let service = self.named("Service", host);
        let service_port = seq(&service["spec"]["ports"])
            .iter()
            .find(|p| p["port"].as_u64() == Some(port))
            .unwrap_or_else(|| panic!("Service {host} has no port {port}"));
        let target = &service_port["targetPort"];
        let selector = service["spec"]["selector"]
            .as_mapping()
            .unwrap_or_else(|| panic!("Service {host} selects no pods"));
        self.workloads()
            .map(|w| &w["spec"]["template"])
            .filter(|t| {
                selector
                    .iter()
                    .all(|(k, v)| t["metadata"]["labels"].get(k) == Some(v))
            })
            .flat_map(|t| seq(&t["spec"]["containers"]))
            .find_map(|c| {
                let answering = seq(&c["ports"]).iter().find(|p| {
                    (target.is_string() && p["name"] == *target)
                        || p["containerPort"] == *target
                        || (target.is_null() && p["containerPort"].as_u64() == Some(port))
                })?;
                Some((
                    service_of_binary(&c["command"])?,
                    answering["containerPort"].as_u64()?,
                ))
            })
            .unwrap_or_else(|| panic!("{url}: Service {host} reaches no sock container"))
    }
}

fn seq(value: &Value) -> &[Value] {
    value.as_sequence().map_or(&[], Vec::as_slice)
}

fn mount_path<'a>(container: &'a Value, volume: &str) -> Option<&'a str> {
    seq(&container["volumeMounts"])
        .iter()
        .find(|m| m["name"] == volume)
        .and_then(|m| m["mountPath"].as_str())
}

fn volume_mounted_at<'a>(container: &'a Value, path: &str) -> Option<&'a str> {
    seq(&container["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == path)
        .and_then(|m| m["name"].as_str())
}

/// The service sections of the ConfigMap's sock.toml, each also loaded
/// the way the service loads it (so types are checked too).
fn k8s_config(manifests: &Manifests) -> BTreeMap<String, toml::Table> {
    let map = manifests.named("ConfigMap", "sock-config");
    let text = map["data"]["sock.toml"]
        .as_str()
        .expect("sock-config has sock.toml");
    let table: toml::Table = toml::from_str(text).expect("sock.toml is valid TOML");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("sock.toml");
    std::fs::write(&file, text).expect("write sock.toml");
    let load = |service: &str| match service {
        "gateway" => {
            sock_service::load_config::<sock_gateway::Config>(service, Some(&file)).map(drop)
        }
        "registry" => {
            sock_service::load_config::<sock_registry::Config>(service, Some(&file)).map(drop)
        }
        "cache" => sock_service::load_config::<sock_cache::Config>(service, Some(&file)).map(drop),
        _ => sock_service::load_config::<sock_sandboxd::Config>(service, Some(&file)).map(drop),
    };
    let mut sections = BTreeMap::new();
    for (service, section) in table {
        assert!(
            SERVICES.contains(&service.as_str()),
            "sock.toml: unknown section [{service}]"
        );
        let section = section.as_table().expect("a section is a table").clone();
        let known = config_keys(&service);
        for key in section.keys() {
            assert!(
                known.contains(key),
                "sock.toml: [{service}] has no key '{key}' (known: {known:?})"
            );
        }
        load(&service).unwrap_or_else(|e| panic!("sock.toml does not load: {e}"));
        sections.insert(service, section);
    }
    sections
}

fn key<'a>(config: &'a BTreeMap<String, toml::Table>, service: &str, key: &str) -> &'a str {
    config[service][key]
        .as_str()
        .unwrap_or_else(|| panic!("sock.toml: [{service}] {key} is missing"))
}

#[test]
fn k8s_manifests_parse_and_every_file_is_applied() {
    let manifests = Manifests::load();
    let listed: BTreeSet<&str> = manifests
        .of_kind("Kustomization")
        .flat_map(|k| seq(&k["resources"]))
        .map(|r| r.as_str().expect("a resource is a file name"))
        .collect();
    let files: BTreeSet<&str> = manifests
        .docs
        .iter()
        .filter(|(_, d)| d["kind"] != "Kustomization")
        .map(|(f, _)| f.as_str())
        .collect();
    assert_eq!(
        listed, files,
        "kustomization.yaml lists exactly the manifests"
    );
    for (file, doc) in &manifests.docs {
        assert!(
            doc["apiVersion"].is_string(),
            "{file}: a document without apiVersion"
        );
        if doc["kind"] != "Kustomization" {
            assert!(
                doc["metadata"]["name"].is_string(),
                "{file}: a document without a name"
            );
        }
    }
}

#[test]
fn k8s_manifests_wire_the_services_with_their_real_config_keys() {
    let manifests = Manifests::load();
    let config = k8s_config(&manifests);
    assert_eq!(
        config.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        SERVICES.into_iter().collect(),
        "sock.toml configures all four services"
    );
    for (service, section) in &config {
        for key in section.keys() {
            assert!(
                !key.ends_with("_token"),
                "sock.toml: [{service}] {key}: a token belongs in the Secret, not the ConfigMap"
            );
        }
    }

    let mut tokens: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for service in SERVICES {
        let (container, pod) = manifests.container(service);
        let command: Vec<&str> = seq(&container["command"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            command[1..],
            ["--config", "/etc/sock/sock.toml"],
            "sock-{service} reads the ConfigMap"
        );
        let config_volume = volume_mounted_at(container, "/etc/sock")
            .unwrap_or_else(|| panic!("sock-{service} does not mount /etc/sock"));
        assert!(
            seq(&pod["volumes"])
                .iter()
                .any(|v| v["name"] == config_volume && v["configMap"]["name"] == "sock-config"),
            "sock-{service}: /etc/sock is the sock-config ConfigMap"
        );
        for var in seq(&container["env"]) {
            let name = var["name"].as_str().expect("env name");
            if let Some((target, key)) = config_env(name) {
                assert_eq!(
                    target, service,
                    "sock-{service} sets another service's {name}"
                );
                assert!(
                    config_keys(service).contains(&key),
                    "{name}: sock-{service} has no key '{key}'"
                );
            }
            if let Some(kind) = token_kind(name) {
                check_k8s_token(service, container, pod, var, &kind);
                tokens.entry(service).or_default().insert(kind);
            }
        }
        for kind in needed_tokens(service) {
            assert!(
                tokens.get(service).is_some_and(|t| t.contains(*kind)),
                "sock-{service} has no {kind} token"
            );
        }
        // Probes ask the port the service listens on.
        let listen = key(
            &config,
            service,
            if service == "registry" {
                "grpc_listen"
            } else {
                "listen"
            },
        );
        for probe in ["readinessProbe", "livenessProbe"] {
            let probe_spec = &container[probe];
            let probed = if let Some(port) = probe_spec["grpc"]["port"].as_u64() {
                port
            } else {
                let exec: Vec<&str> = seq(&probe_spec["exec"]["command"])
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                assert_eq!(
                    exec.first(),
                    Some(&"sock-health"),
                    "sock-{service} {probe}: {exec:?}"
                );
                u64::from(port_of(exec[1]))
            };
            assert_eq!(
                probed,
                u64::from(port_of(listen)),
                "sock-{service} {probe} probes its listen port"
            );
        }
    }

    // Addresses resolve, through Services, to the port the right service
    // listens on.
    let reaches = |url: &str, service: &str, listen: &str| {
        let (found, port) = manifests.reaches(url);
        assert_eq!(found, service, "{url} reaches sock-{found}");
        assert_eq!(
            port,
            u64::from(port_of(key(&config, service, listen))),
            "{url}: sock-{service} listens elsewhere"
        );
    };
    reaches(
        key(&config, "gateway", "registry_addr"),
        "registry",
        "grpc_listen",
    );
    reaches(
        key(&config, "cache", "registry_url"),
        "registry",
        "http_listen",
    );
    for listen in ["listen", "http_listen"] {
        let url = format!(
            "http://sock-gateway:{}",
            port_of(key(&config, "gateway", listen))
        );
        reaches(&url, "gateway", listen);
    }
    // The gateway finds every node through a headless Service.
    let nodes = config["gateway"]["sandboxd_addrs"]
        .as_array()
        .expect("sock.toml: [gateway] sandboxd_addrs lists the nodes");
    assert!(!nodes.is_empty(), "the gateway has nodes");
    for node in nodes {
        let node = node.as_str().expect("a node address is a string");
        let name = node
            .strip_prefix("dns:")
            .unwrap_or_else(|| panic!("{node}: nodes come and go; name them with dns:HOST:PORT"));
        reaches(&format!("http://{name}"), "sandboxd", "listen");
        let service = manifests.named("Service", host_of(name));
        assert_eq!(
            service["spec"]["clusterIP"], "None",
            "{node}: only a headless Service resolves to every node"
        );
    }

    // sandboxd, root's API, is on TCP for the gateways in other pods:
    // only with the node token, which the gateways show.
    let listen = key(&config, "sandboxd", "listen");
    assert!(
        listen.starts_with("unix:") || tokens["sandboxd"].contains("node"),
        "sandboxd listens on TCP {listen} without a node token"
    );

    // cache and sandboxd: one pod, the cache over loopback, the cache's
    // volume at the same path in both (code dirs are absolute paths).
    let (cache, cache_pod) = manifests.container("cache");
    let (sandboxd, sandboxd_pod) = manifests.container("sandboxd");
    assert!(
        std::ptr::eq(cache_pod, sandboxd_pod),
        "cache and sandboxd share a pod"
    );
    assert_eq!(
        key(&config, "sandboxd", "cache_addr"),
        format!(
            "http://127.0.0.1:{}",
            port_of(key(&config, "cache", "listen"))
        )
    );
    let data_dir = key(&config, "cache", "data_dir");
    let volume =
        volume_mounted_at(cache, data_dir).expect("the cache mounts a volume at its data_dir");
    assert_eq!(
        mount_path(sandboxd, volume),
        Some(data_dir),
        "sandboxd sees the cache volume at the same path"
    );
    assert_eq!(
        key(&config, "sandboxd", "cache_data_dir"),
        data_dir,
        "sandboxd mounts only dirs below the cache's data dir, so it must name it"
    );
    let state = key(&config, "sandboxd", "data_dir");
    assert!(
        seq(&sandboxd["volumeMounts"]).iter().any(|m| m["mountPath"]
            .as_str()
            .is_some_and(|p| Path::new(state).starts_with(p) && p != state && p != "/")),
        "sandboxd's state is inside a volume, below its mount point"
    );

    // Only sandboxd is privileged; it sees the host's cgroups, not its pids.
    assert_eq!(
        sandboxd["securityContext"]["privileged"], true,
        "sandboxd runs privileged"
    );
    let cgroup =
        volume_mounted_at(sandboxd, "/sys/fs/cgroup").expect("sandboxd mounts /sys/fs/cgroup");
    assert!(
        seq(&sandboxd_pod["volumes"])
            .iter()
            .any(|v| v["name"] == cgroup && v["hostPath"]["path"] == "/sys/fs/cgroup")
    );
    for workload in manifests.workloads() {
        let pod = &workload["spec"]["template"]["spec"];
        assert_ne!(pod["hostPID"], true, "no sock pod shares the host's pids");
        for c in seq(&pod["containers"]) {
            if service_of_binary(&c["command"]) != Some("sandboxd") {
                assert_ne!(
                    c["securityContext"]["privileged"], true,
                    "only sandboxd is privileged"
                );
                assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
            }
        }
    }
}

/// The Secret every token comes from (deploy/k8s/README.md says how it is
/// made).
const K8S_TOKENS_SECRET: &str = "sock-tokens";

/// A token variable takes its kind's key of the tokens Secret: as a file
/// of a Secret volume the container mounts, or through `secretKeyRef`;
/// never as a literal in the manifest.
fn check_k8s_token(service: &str, container: &Value, pod: &Value, var: &Value, kind: &str) {
    let name = var["name"].as_str().expect("env name");
    if !name.ends_with("_FILE") {
        let secret = &var["valueFrom"]["secretKeyRef"];
        assert_eq!(
            secret["name"], K8S_TOKENS_SECRET,
            "sock-{service}: {name} is not taken from the Secret {K8S_TOKENS_SECRET}"
        );
        assert_eq!(
            secret["key"], kind,
            "sock-{service}: {name} takes another token"
        );
        return;
    }
    let path = Path::new(
        var["value"]
            .as_str()
            .unwrap_or_else(|| panic!("sock-{service}: {name} names no file")),
    );
    let mount = seq(&container["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"].as_str().map(Path::new) == path.parent())
        .unwrap_or_else(|| {
            panic!(
                "sock-{service}: {name}={} is in no volume it mounts",
                path.display()
            )
        });
    let volume = seq(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("sock-{service}: mounts an undeclared volume"));
    assert_eq!(
        volume["secret"]["secretName"], K8S_TOKENS_SECRET,
        "sock-{service}: {name} is not read from the Secret {K8S_TOKENS_SECRET}"
    );
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .expect("a file name");
    let items = seq(&volume["secret"]["items"]);
    let key = if items.is_empty() {
        file
    } else {
        items
            .iter()
            .find(|i| i["path"] == file)
            .and_then(|i| i["key"].as_str())
            .unwrap_or_else(|| panic!("sock-{service}: {name}: its Secret volume has no {file}"))
    };
    assert_eq!(key, kind, "sock-{service}: {name} reads the {key} token");
}

// ---------------------------------------------------------------------
// the image
// ---------------------------------------------------------------------

#[test]
fn the_source_image_copies_every_workspace_member() {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo().join("Cargo.toml")).expect("Cargo.toml"))
            .expect("Cargo.toml is TOML");
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).expect("Dockerfile");
    let copied: BTreeSet<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[..words.len() - 1].to_vec()
        })
        .collect();
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    let sent: BTreeSet<&str> = ignore.lines().filter_map(|l| l.strip_prefix('!')).collect();
    let members = manifest["workspace"]["members"]
        .as_array()
        .expect("workspace members");
    for member in members {
        let top = member
            .as_str()
            .expect("a member path")
            .split('/')
            .next()
            .expect("a first component");
        assert!(
            copied.contains(top),
            "deploy/Dockerfile does not COPY {top}/ (workspace member {member})"
        );
        assert!(
            sent.contains(top),
            ".dockerignore leaves {top}/ out of the build context"
        );
    }
}

// ---------------------------------------------------------------------
// compose files
// ---------------------------------------------------------------------

/// Replaces `${VAR:-default}` by its default and `${VAR:?msg}` by "", as
/// compose does with none of the variables set.
fn interpolate_defaults(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("unclosed ${") + start;
        let expr = &rest[start + 2..end];
        if let Some((_, default)) = expr.split_once(":-") {
            out.push_str(default);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Merges an override into a base as compose does for the keys our files
/// override: mappings key by key, anything else replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            for (k, v) in over {
                match base.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// The services of compose files, each over the ones before.
fn compose_services(files: &[&str]) -> BTreeMap<String, Value> {
    let mut services = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(repo().join(file)).expect("read compose file");
        let mut doc: Value = serde_yaml::from_str(&interpolate_defaults(&text))
            .unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
        doc.apply_merge().expect("merge keys");
        for (name, mut service) in doc["services"].as_mapping().expect("services").clone() {
            service.apply_merge().expect("merge keys");
            let name = name.as_str().expect("service name").to_string();
            match services.get_mut(&name) {
                Some(base) => merge(base, service),
                None => {
                    services.insert(name, service);
                }
            }
        }
    }
    services
}

/// Loads a service's config from `SOCK_<SERVICE>_*` variables the way the
/// service does (figment parses each value leniently, then serde checks
/// the types).
fn load_from_env(service: &str, env: &BTreeMap<String, String>) -> Result<(), String> {
    use figment::providers::Serialized;
    fn load<T: Default + serde::Serialize + serde::de::DeserializeOwned>(
        vars: figment::value::Dict,
    ) -> Result<(), String> {
        figment::Figment::from(Serialized::defaults(T::default()))
            .merge(Serialized::defaults(vars))
            .extract::<T>()
            .map(drop)
            .map_err(|e| e.to_string())
    }
    let vars: figment::value::Dict = env
        .iter()
        .filter_map(|(name, value)| {
            let (target, key) = config_env(name)?;
            let value: figment::value::Value = value.parse().expect("infallible");
            (target == service).then_some((key, value))
        })
        .collect();
    match service {
        "gateway" => load::<sock_gateway::Config>(vars),
        "registry" => load::<sock_registry::Config>(vars),
        "cache" => load::<sock_cache::Config>(vars),
        _ => load::<sock_sandboxd::Config>(vars),
    }
}

fn env_of(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let value = v
                        .as_str()
                        .map_or_else(|| serde_yaml::to_string(v).expect("yaml"), str::to_string);
                    (k.as_str().expect("env name").to_string(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_files_wire_the_services_with_their_real_config_keys() {
    check_compose(&["compose.yaml"]);
    check_compose(&["compose.yaml", "compose.node2.yaml"]);
}

fn check_compose(files: &[&str]) {
    let services = compose_services(files);
    let sock: BTreeMap<&str, (&'static str, BTreeMap<String, String>)> = services
        .iter()
        .filter_map(|(name, s)| {
            Some((
                name.as_str(),
                (service_of_binary(&s["command"])?, env_of(s)),
            ))
        })
        .collect();
    for service in SERVICES {
        assert!(
            sock.values().any(|(s, _)| *s == service),
            "compose runs no sock-{service}"
        );
    }
    assert!(services.contains_key("jaeger"), "compose.yaml runs Jaeger");

    // The one-shot service that makes the tokens: where, and for whom.
    let (tokens_service, script) = services
        .iter()
        .find_map(|(name, s)| {
            let script = seq(&s["command"])
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ");
            let runs = script.contains("sock tokens");
            runs.then_some((name.as_str(), script))
        })
        .expect("a compose service runs `sock tokens`");
    let argument = |flag: &str| -> &str {
        script
            .split(flag)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("{tokens_service}: `sock tokens` without {flag}"))
    };
    let secrets_dir = argument("--data-dir");
    let (uid, gid) = image_user();
    assert_eq!(
        argument("--owner"),
        format!("{uid}:{gid}"),
        "{tokens_service} hands the tokens to the image's sock user, the services'"
    );

    let listen = |name: &str| -> &str {
        let (service, env) = &sock[name];
        let var = if *service == "registry" {
            "SOCK_REGISTRY_GRPC_LISTEN".into()
        } else {
            format!("SOCK_{}_LISTEN", service.to_ascii_uppercase())
        };
        &env[&var]
    };
    // Whether `addr` (host:port, http://host:port or unix:PATH) is where
    // a service that listens on `listen` answers.
    let answers = |addr: &str, listen: &str| match listen.strip_prefix("unix:") {
        Some(_) => addr == listen,
        None => !addr.starts_with("unix:") && port_of(addr) == port_of(listen),
    };
    let volume_at = |name: &str, path: &str| -> Option<String> {
        seq(&services[name]["volumes"])
            .iter()
            .filter_map(Value::as_str)
            .find_map(|v| {
                let mut parts = v.split(':');
                let (source, target) = (parts.next()?, parts.next()?);
                (target == path).then(|| source.to_string())
            })
    };
    let secrets_volume =
        volume_at(tokens_service, secrets_dir).expect("`sock tokens` writes into a volume");

    for (name, (service, env)) in &sock {
        let mut tokens = BTreeSet::new();
        for var in env.keys() {
            if let Some((target, key)) = config_env(var) {
                assert_eq!(target, *service, "{name} sets another service's {var}");
                assert!(
                    config_keys(service).contains(&key),
                    "{name}: {var}: sock-{service} has no key '{key}'"
                );
            }
            if var.ends_with("_LISTEN") {
                let unix = *service == "sandboxd" && env[var].starts_with("unix:");
                assert!(
                    env[var].starts_with("0.0.0.0:") || unix,
                    "{name}: {var}={} must bind all interfaces in a container",
                    env[var]
                );
            }
            if let Some(kind) = token_kind(var) {
                assert!(
                    var.ends_with("_FILE"),
                    "{name}: {var}: a token is read from the secrets volume, not written here"
                );
                assert_eq!(
                    Path::new(&env[var]),
                    Path::new(secrets_dir).join("tokens").join(&kind),
                    "{name}: {var} is not the {kind} token `sock tokens` makes"
                );
                tokens.insert(kind);
            }
        }
        for kind in needed_tokens(service) {
            assert!(tokens.contains(*kind), "{name} has no {kind} token");
        }
        assert_eq!(
            volume_at(name, secrets_dir).as_ref(),
            Some(&secrets_volume),
            "{name} reads token files but does not mount the {secrets_volume} volume at {secrets_dir}"
        );
        assert_eq!(
            services[*name]["depends_on"][tokens_service]["condition"],
            "service_completed_successfully",
            "{name} starts before its tokens exist"
        );
        load_from_env(service, env)
            .unwrap_or_else(|e| panic!("{name}: its SOCK_* variables do not load: {e}"));
        assert!(
            env.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT"),
            "{name} exports spans"
        );
        let health: Vec<&str> = seq(&services[*name]["healthcheck"]["test"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            health[..2],
            ["CMD", "sock-health"],
            "{name} has a grpc health check"
        );
        assert!(
            answers(health[2], listen(name)),
            "{name}'s health check probes {}, not where it listens",
            health[2]
        );
        for port in seq(&services[*name]["ports"])
            .iter()
            .filter_map(Value::as_str)
        {
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name} publishes {port} beyond this machine"
            );
        }
        let powered = !services[*name]["cap_add"].is_null()
            || !services[*name]["security_opt"].is_null()
            || services[*name]["user"] == "root";
        assert_eq!(
            powered,
            *service == "sandboxd",
            "{name}: only sandboxd has powers"
        );
        assert_ne!(services[*name]["pid"], "host", "{name} keeps its own pids");
        assert_ne!(
            services[*name]["privileged"], true,
            "{name}: capabilities, not privileged"
        );

        let peer = |var: &str| -> &str {
            let url = &env[var];
            let host = host_of(url);
            let (peer, _) = sock
                .get(host)
                .unwrap_or_else(|| panic!("{name}: {var}={url} names no sock service"));
            assert!(
                answers(url, listen(host)),
                "{name}: {var}={url} is not where {host} listens"
            );
            peer
        };
        match *service {
            "gateway" => {
                assert_eq!(peer("SOCK_GATEWAY_REGISTRY_ADDR"), "registry");
                // Every node, and nothing else, is one of the gateway's.
                let nodes: toml::Table =
                    toml::from_str(&format!("n = {}", env["SOCK_GATEWAY_SANDBOXD_ADDRS"]))
                        .expect("SOCK_GATEWAY_SANDBOXD_ADDRS is a list");
                let mut reached = BTreeSet::new();
                for node in nodes["n"].as_array().expect("a list") {
                    let node = node.as_str().expect("a node address");
                    let Some(path) = node.strip_prefix("unix:") else {
                        assert_eq!(
                            sock.get(host_of(node)).map(|(s, _)| *s),
                            Some("sandboxd"),
                            "{node} is no sandboxd"
                        );
                        assert!(answers(node, listen(host_of(node))), "{node}");
                        reached.insert(host_of(node));
                        continue;
                    };
                    // A unix socket: a volume both mount at its dir, and a
                    // socket file handed to the uid the gateway runs as.
                    let (&sandboxd, (_, sandboxd_env)) = sock
                        .iter()
                        .find(|(n, (s, _))| *s == "sandboxd" && listen(n) == node)
                        .unwrap_or_else(|| panic!("{node}: no sandboxd listens there"));
                    let dir = Path::new(path)
                        .parent()
                        .and_then(Path::to_str)
                        .expect("a socket dir");
                    let volume = volume_at(sandboxd, dir)
                        .unwrap_or_else(|| panic!("{sandboxd}: its socket dir {dir} is no volume"));
                    assert_eq!(
                        volume_at(name, dir),
                        Some(volume),
                        "{name} does not see {sandboxd}'s socket dir {dir}"
                    );
                    assert!(
                        services[*name]["user"].is_null(),
                        "{name} runs as the image's user, whom sandboxd lets in"
                    );
                    assert_eq!(
                        sandboxd_env.get("SOCK_SANDBOXD_CLIENT_UID"),
                        Some(&uid),
                        "{sandboxd}'s socket is closed to {name} (uid {uid})"
                    );
                    reached.insert(sandboxd);
                }
                let every: BTreeSet<&str> = sock
                    .iter()
                    .filter(|(_, (s, _))| *s == "sandboxd")
                    .map(|(n, _)| *n)
                    .collect();
                assert_eq!(reached, every, "the gateway sends calls to every node");
            }
            "cache" => {
                let url = &env["SOCK_CACHE_REGISTRY_URL"];
                let (peer, registry_env) = &sock[host_of(url)];
                assert_eq!(*peer, "registry");
                assert!(answers(url, &registry_env["SOCK_REGISTRY_HTTP_LISTEN"]));
            }
            "sandboxd" => {
                assert!(
                    listen(name).starts_with("unix:") || tokens.contains("node"),
                    "{name}: sandboxd on TCP {} with no node token",
                    listen(name)
                );
                assert_eq!(peer("SOCK_SANDBOXD_CACHE_ADDR"), "cache");
                let cache = host_of(&env["SOCK_SANDBOXD_CACHE_ADDR"]);
                let dir = &sock[cache].1["SOCK_CACHE_DATA_DIR"];
                let volume = volume_at(cache, dir)
                    .unwrap_or_else(|| panic!("{cache}: its data dir is no volume"));
                assert_eq!(
                    volume_at(name, dir),
                    Some(volume),
                    "{name} mounts {cache}'s volume at the same path"
                );
                assert_eq!(
                    env.get("SOCK_SANDBOXD_CACHE_DATA_DIR"),
                    Some(dir),
                    "{name} mounts only dirs below {cache}'s data dir, so it must name it"
                );
                assert_eq!(
                    volume_at(name, "/sys/fs/cgroup").as_deref(),
                    Some("/sys/fs/cgroup")
                );
                let state = &env["SOCK_SANDBOXD_DATA_DIR"];
                assert!(
                    seq(&services[*name]["volumes"])
                        .iter()
                        .filter_map(|v| v.as_str()?.split(':').nth(1))
                        .any(|t| Path::new(state).starts_with(t) && t != state),
                    "{name}: its data dir {state} is inside a volume, below its mount point"
                );
            }
            _ => {}
        }
    }
    let instances: BTreeSet<&String> = sock
        .values()
        .filter_map(|(_, env)| env.get("SOCK_SANDBOXD_INSTANCE"))
        .collect();
    assert_eq!(
        instances.len(),
        sock.values().filter(|(s, _)| *s == "sandboxd").count(),
        "{files:?}: each node's sandboxd names its own cgroups"
    );
}

// ---------------------------------------------------------------------
// the compose stack, for real
// ---------------------------------------------------------------------

const START_TIMEOUT: Duration = Duration::from_secs(120);
const SPAN_TIMEOUT: Duration = Duration::from_secs(30);

/// True when this machine can run the stack: root (sandboxd's sandboxes),
/// a Docker daemon, and docker compose in either flavour. Without them the
/// test fails, unless `SOCK_TEST_ALLOW_SKIP=1` asks for a skip.
fn have_docker_compose() -> bool {
    if !have_root() {
        return false;
    }
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let ok = works("docker", &["info"])
        && (works("docker", &["compose", "version"]) || works("docker-compose", &["version"]));
    if !ok {
        assert!(
            std::env::var("SOCK_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1"),
            "this test needs a Docker daemon and docker compose (or docker-compose); set \
             SOCK_TEST_ALLOW_SKIP=1 to skip it"
        );
        eprintln!(
            "\n*** SKIPPED: needs a Docker daemon and docker compose (or docker-compose) ***\n"
        );
    }
    ok
}

/// The address containers reach this machine at (what `host-gateway`
/// means to Docker): the default bridge's own address.
fn docker_host_address() -> IpAddr {
    nix::ifaddrs::getifaddrs()
        .expect("list network interfaces")
        .find_map(|ifa| {
            let addr = ifa.address?;
            (ifa.interface_name == "docker0")
                .then(|| addr.as_sockaddr_in().map(|a| IpAddr::V4(a.ip())))
                .flatten()
        })
        .expect("the docker0 bridge has an IPv4 address")
}

/// Relays TCP from an address containers can reach to the OTLP receiver,
/// which listens on 127.0.0.1 only.
struct Relay {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(bind: IpAddr, to: SocketAddr) -> Relay {
        let listener = TcpListener::bind((bind, 0))
            .await
            .expect("bind the OTLP relay");
        let addr = listener.local_addr().expect("relay address");
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay { addr, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One compose project of this test: its own name, image tag, sandboxd
/// instances and free published ports. Dropping it runs `down -v` and
/// removes the image tag, also when the test failed half-way.
struct Project {
    name: String,
    env: Vec<(&'static str, String)>,
    down: bool,
}

/// compose-prebuilt adds compose.yaml and compose.prebuilt.yaml itself.
const BASE_FILES: [&str; 2] = ["compose.yaml", "compose.prebuilt.yaml"];
const TEST_FILES: [&str; 2] = ["compose.node2.yaml", "compose.test.yaml"];

impl Project {
    /// `tokens_dir` gets the CLI's tokens; the caches install packages
    /// from the wheels in `wheels`.
    fn new(otlp_endpoint: &str, tokens_dir: &Path, wheels: &Path) -> Project {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos();
        let name = format!("socke2e{}x{nanos}", std::process::id());
        let env = vec![
            ("SOCK_IMAGE", format!("sock:{name}")),
            ("SOCK_COMPOSE_INSTANCE", name.clone()),
            ("SOCK_PUBLISH_GATEWAY", "127.0.0.1:".into()),
            ("SOCK_PUBLISH_GATEWAY_HTTP", "127.0.0.1:".into()),
            ("SOCK_PUBLISH_REGISTRY", "127.0.0.1:".into()),
            ("SOCK_TEST_OTLP_ENDPOINT", otlp_endpoint.into()),
            ("SOCK_COMPOSE_TOKENS_DIR", tokens_dir.display().to_string()),
            ("SOCK_TEST_WHEELS", wheels.display().to_string()),
        ];
        Project {
            name,
            env,
            down: false,
        }
    }

    fn command(&self, script: &str) -> Command {
        let mut command = Command::new(repo().join("scripts").join(script));
        command.current_dir(repo());
        let base: &[&str] = if script == "compose" {
            &BASE_FILES
        } else {
            &[]
        };
        for file in base.iter().chain(&TEST_FILES) {
            command.args(["-f", file]);
        }
        command
            .args(["-p", &self.name])
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        command
    }

    /// Runs `scripts/compose <files> -p <name> args`, failing on error.
    fn compose(&self, args: &[&str]) -> String {
        let output = self
            .command("compose")
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/compose");
        assert!(output.status.success(), "compose {args:?} failed");
        String::from_utf8(output.stdout).expect("compose prints UTF-8")
    }

    /// `release build + base image + up -d --build` of the named services.
    fn up(&self, services: &[&str]) {
        let status = self
            .command("compose-prebuilt")
            .args(["up", "-d", "--build"])
            .args(services)
            .status()
            .expect("run scripts/compose-prebuilt");
        assert!(status.success(), "compose up failed (its output is above)");
    }

    /// The 127.0.0.1 address a service's port is published on.
    fn published(&self, service: &str, port: u16) -> String {
        let out = self.compose(&["port", service, &port.to_string()]);
        let addr = out.trim();
        assert!(
            addr.starts_with("127.0.0.1:"),
            "{service}:{port} is published on '{addr}'"
        );
        format!("http://{addr}")
    }

    fn wait_healthy(&self, services: &[&str]) {
        let started = Instant::now();
        for service in services {
            let id = self.compose(&["ps", "-q", service]).trim().to_string();
            assert!(!id.is_empty(), "{service} has no container");
            loop {
                let out = docker(&["inspect", "-f", "{{.State.Health.Status}}", &id]);
                if out.trim() == "healthy" {
                    break;
                }
                assert!(
                    started.elapsed() < START_TIMEOUT,
                    "{service} is '{}' after {START_TIMEOUT:?}",
                    out.trim()
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }

    /// `down -v` and the image tag; says whether compose succeeded. (It
    /// also runs in `Drop`, where a panic would abort the test binary.)
    fn down(&mut self) -> bool {
        self.down = true;
        let status = self
            .command("compose")
            .args(["down", "-v", "--remove-orphans", "-t", "30"])
            .status();
        let _ = Command::new("docker")
            .args(["rmi", &format!("sock:{}", self.name)])
            .stdout(Stdio::null())
            .status();
        status.is_ok_and(|s| s.success())
    }

    /// What Docker still holds of this project.
    fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let mut found = Vec::new();
        for (what, args) in [
            ("container", vec!["ps", "-a", "-q", "--filter", &label]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
            ("network", vec!["network", "ls", "-q", "--filter", &label]),
        ] {
            found.extend(docker(&args).lines().map(|id| format!("{what} {id}")));
        }
        found
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        if std::thread::panicking() {
            let _ = self
                .command("compose")
                .args(["logs", "--no-color", "--tail", "40"])
                .status();
        }
        let _ = self.down();
    }
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run docker");
    assert!(output.status.success(), "docker {args:?} failed");
    String::from_utf8(output.stdout).expect("docker prints UTF-8")
}

async fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(addr.to_string())
        .expect("valid endpoint")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// The stack's published addresses, and the operator's tokens as the
/// `tokens` service left them for the CLI.
#[derive(Clone)]
struct Stack {
    registry: String,
    gateway: String,
    gateway_http: String,
    tokens_dir: PathBuf,
}

impl Stack {
    /// The `admin` or `invoke` token in the tokens dir.
    fn token(&self, kind: &str) -> String {
        let path = self.tokens_dir.join("tokens").join(kind);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    async fn authed(&self, addr: &str, kind: &str) -> Authed {
        let token = sock_service::Secret::from(self.token(kind));
        sock_service::Bearer::new(channel(addr).await, Some(&token)).expect("tokens are ASCII")
    }

    async fn registry(&self) -> RegistryClient<Authed> {
        RegistryClient::new(self.authed(&self.registry, "admin").await)
    }

    async fn gateway(&self) -> GatewayClient<Authed> {
        GatewayClient::new(self.authed(&self.gateway, "invoke").await)
    }

    /// `POST /run/<path>` of a JSON body, with the invoke token.
    async fn run(&self, path: &str, body: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/run/{path}", self.gateway_http))
            .bearer_auth(self.token("invoke"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /run/{path} through the published HTTP port: {e}"))
    }

    /// `sock push DIR` on the host, with no token flag: the CLI finds the
    /// admin token in its data dir, as after `docker compose up`.
    fn cli_push(&self, dir: &Path) {
        let output = Command::new(repo().join("target/release/sock"))
            .arg("push")
            .arg(dir)
            .env("SOCK_DATA_DIR", &self.tokens_dir)
            .env("SOCK_CLI_REGISTRY", &self.registry)
            .env_remove("SOCK_TOKEN")
            .output()
            .expect("run target/release/sock");
        assert!(
            output.status.success(),
            "sock push {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The trace of the call with this id (the gateway records it on its
/// `invoke` span), when spans of all four services have arrived for it.
fn whole_trace<'a>(spans: &'a [Span], call_id: &str) -> Option<&'a str> {
    let trace = &spans
        .iter()
        .find(|s| s.attribute("sock.call_id") == Some(call_id))?
        .trace_id;
    let services: BTreeSet<&str> = spans
        .iter()
        .filter(|s| &s.trace_id == trace)
        .map(|s| s.service.as_str())
        .collect();
    SERVICES
        .iter()
        .all(|s| services.contains(format!("sock-{s}").as_str()))
        .then_some(trace)
}

/// Docker's health check says a restarted sandboxd is up; the gateway
/// learns it from its own probes, one a second (`health_interval_ms`), and
/// until then still treats the node as failed. Three probes' time.
async fn gateway_sees_restarted_nodes() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// Calls echo through the gateway's gRPC port; answers the call id.
async fn echo(stack: &Stack, payload: &str) -> String {
    let response = stack
        .gateway()
        .await
        .invoke(InvokeRequest {
            function: "echo".into(),
            payload: payload.into(),
            timeout_ms: None,
        })
        .await
        .unwrap_or_else(|e| panic!("invoke echo through the gateway: {e}"))
        .into_inner();
    match response.outcome.expect("an outcome") {
        Outcome::Result(result) => assert_eq!(json(&result), json(payload.as_bytes())),
        Outcome::Error(e) => panic!("echo failed in compose: {e:?}"),
    }
    response.call_id
}

/// The version of Flask the test installs from its wheels.
const FLASK: &str = "3.0.3";

/// A Flask app (WSGI, served at `/run/flask/...`) whose requirements.txt
/// names Flask: the node's cache installs it before the first call.
fn flask_app() -> Vec<u8> {
    sock_testkit::functions::bundle(&[
        (
            "web.py",
            "from importlib.metadata import version\n\
             from flask import Flask, request\n\
             app = Flask(__name__)\n\
             @app.post('/greet/<name>')\n\
             def greet(name):\n    \
             return {'flask': version('flask'), 'hello': name, 'got': request.get_json()}\n",
        ),
        ("requirements.txt", &format!("flask=={FLASK}\n")),
        (
            "ol.yaml",
            // The first call on a node waits for the install.
            "environment:\n  OL_WSGI_ENTRY: web:app\nlimits:\n  timeout_ms: 120000\n",
        ),
    ])
}

/// Calls the Flask app over HTTP and checks its answer.
async fn flask(stack: &Stack) {
    let response = stack.run("flask/greet/compose", r#"{"n": 1}"#).await;
    let status = response.status();
    let body = response.text().await.expect("body");
    assert_eq!(status, 200, "the Flask app: {body}");
    assert_eq!(
        json(body.as_bytes()),
        serde_json::json!({"flask": FLASK, "hello": "compose", "got": {"n": 1}})
    );
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_compose_stack_serves_calls_and_a_pypi_flask_app_with_traces_and_leaves_nothing_behind()
{
    if !have_docker_compose() {
        return;
    }
    let otlp = OtlpReceiver::start().await;
    let receiver: SocketAddr = otlp
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("receiver address");
    let relay = Relay::start(docker_host_address(), receiver).await;
    // The CLI's tokens go here, owned by whoever owns the dir: nobody.
    let tokens_dir = tempfile::tempdir().expect("temp tokens dir");
    let nobody = nix::unistd::Uid::from_raw(65534);
    let nogroup = nix::unistd::Gid::from_raw(65534);
    nix::unistd::chown(tokens_dir.path(), Some(nobody), Some(nogroup)).expect("chown tokens dir");
    let mut project = Project::new(
        &format!("http://{}", relay.addr),
        tokens_dir.path(),
        // The image's Python: Debian bookworm's 3.11.
        &pypi_wheels(&[&format!("flask=={FLASK}")], "3.11"),
    );

    let services = [
        "registry",
        "cache",
        "sandboxd",
        "cache2",
        "sandboxd2",
        "gateway",
    ];
    let started = Instant::now();
    project.up(&services);
    project.wait_healthy(&services);
    eprintln!(
        "compose: release build, image and up took {:?}",
        started.elapsed()
    );

    let stack = Stack {
        registry: project.published("registry", 7071),
        gateway: project.published("gateway", 7070),
        gateway_http: project.published("gateway", 7075),
        tokens_dir: tokens_dir.path().to_path_buf(),
    };

    // The operator's tokens, and only those, are on the host, private to
    // the owner of the dir.
    for kind in ["admin", "invoke"] {
        let meta = std::fs::metadata(tokens_dir.path().join("tokens").join(kind))
            .unwrap_or_else(|e| panic!("the {kind} token is not on the host: {e}"));
        assert_eq!(meta.mode() & 0o777, 0o600, "{kind}");
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{kind}");
        assert_eq!(stack.token(kind).len(), 64, "{kind}");
    }
    assert!(
        !tokens_dir.path().join("tokens/node").exists(),
        "the node token stays in the secrets volume"
    );

    // Without a token, nothing is pushed or called.
    let anonymous = RegistryClient::new(channel(&stack.registry).await)
        .push_function(PushFunctionRequest {
            name: "echo".into(),
            bundle: sock_bundle::pack(&example("echo")).expect("pack examples/echo"),
        })
        .await
        .expect_err("an anonymous push");
    assert_eq!(
        anonymous.code(),
        tonic::Code::Unauthenticated,
        "{anonymous:?}"
    );
    let anonymous = reqwest::Client::new()
        .post(format!("{}/run/echo", stack.gateway_http))
        .body("{}")
        .send()
        .await
        .expect("POST /run/echo");
    assert_eq!(anonymous.status(), 401);

    stack.cli_push(&example("echo"));

    let payload = r#"{"from":"compose","n":[1,2,3]}"#;
    let call_id = echo(&stack, payload).await;

    let answer = stack.run("echo", payload).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(
        json(&answer.bytes().await.expect("body")),
        json(payload.as_bytes())
    );

    // A function with requirements: its node's cache installs Flask.
    stack
        .registry()
        .await
        .push_function(PushFunctionRequest {
            name: "flask".into(),
            bundle: flask_app(),
        })
        .await
        .expect("push the Flask app");
    flask(&stack).await;

    let spans = otlp
        .wait_for(|spans| whole_trace(spans, &call_id).is_some(), SPAN_TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            panic!("call {call_id}: no trace through gateway, registry, cache and sandboxd: {e}")
        });
    let trace = whole_trace(&spans, &call_id).expect("a whole trace");
    let roots: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == trace && s.parent_id.is_none())
        .collect();
    assert!(
        matches!(roots[..], [root] if root.service == "sock-gateway"),
        "the call's trace has one root, at the gateway: {roots:#?}"
    );

    // Either node may go: the gateway sends echo, and the Flask app, to
    // the one left, so each node's cache installs Flask once.
    for (down, up) in [("sandboxd", "sandboxd2"), ("sandboxd2", "sandboxd")] {
        project.compose(&["stop", down]);
        echo(&stack, payload).await;
        flask(&stack).await;
        project.compose(&["start", down]);
        project.wait_healthy(&[down, up]);
        gateway_sees_restarted_nodes().await;
    }

    // sandboxd's containers restarted mid-load (killed, no drain): the calls
    // in flight fail with UNAVAILABLE rather than hang or be retried, and the
    // gateway serves again once the nodes are back.
    stack
        .registry()
        .await
        .push_function(PushFunctionRequest {
            name: "slow".into(),
            bundle: sock_testkit::functions::bundle(&[(
                "f.py",
                "import time\n\ndef f(event):\n    time.sleep(10)\n    return 'late'\n",
            )]),
        })
        .await
        .expect("push slow");
    let in_flight: Vec<_> = (0..3)
        .map(|_| {
            let stack = stack.clone();
            tokio::spawn(async move {
                stack
                    .gateway()
                    .await
                    .invoke(InvokeRequest {
                        function: "slow".into(),
                        payload: b"null".to_vec(),
                        timeout_ms: Some(60_000),
                    })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    project.compose(&["restart", "-t", "0", "sandboxd", "sandboxd2"]);
    for call in in_flight {
        let answer = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("no call in flight hangs")
            .expect("call task");
        match answer {
            Err(status) => assert_eq!(
                status.code(),
                tonic::Code::Unavailable,
                "a call whose node died: {status:?}"
            ),
            Ok(response) => panic!(
                "a call in flight cannot outlive its killed node: {:?}",
                response.into_inner()
            ),
        }
    }
    project.wait_healthy(&["sandboxd", "sandboxd2"]);
    gateway_sees_restarted_nodes().await;
    echo(&stack, payload).await;
    flask(&stack).await;

    assert!(project.down(), "compose down -v failed");
    assert_eq!(
        project.leftovers(),
        Vec::<String>::new(),
        "down -v removes containers, volumes and networks"
    );
    for node in ["node1", "node2"] {
        let instance = format!("{}-{node}", project.name);
        assert_eq!(
            leftover_cgroups(&instance),
            Vec::<PathBuf>::new(),
            "sandboxd of {node} removed its cgroups"
        );
    }
}
