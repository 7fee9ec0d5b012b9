//! The registry as its clients see it: `run` in-process on loopback
//! listeners over a temporary data dir, driven with the generated gRPC
//! client and reqwest.
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::header::{
    CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};
use sock_bundle::testing::{TarBuilder, hostile_bundles, incompressible};
use sock_proto::v1::registry_client::RegistryClient;
use sock_proto::v1::{
    ClaimFiringRequest, DeleteFunctionRequest, ErrorKind, FunctionInfo, GetFunctionRequest,
    ListFunctionsRequest, PushFunctionRequest, WatchFunctionsRequest,
};
use sock_registry::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

/// A running registry and its clients; dropping it stops it.
struct Registry {
    server: sock_testkit::registry::Registry,
    channel: Channel,
    grpc: RegistryClient<Channel>,
    http: reqwest::Client,
    base: String,
}

impl Registry {
    async fn start(data_dir: &Path) -> Registry {
        Registry::start_with(Config {
            data_dir: data_dir.to_path_buf(),
            ..Config::default()
        })
        .await
    }

    async fn start_with(config: Config) -> Registry {
        let server = sock_testkit::registry::Registry::start_with(config).await;
        let channel = Channel::from_shared(server.endpoint())
            .expect("grpc url")
            .connect()
            .await
            .expect("connect grpc");
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client");
        Registry {
            grpc: RegistryClient::new(channel.clone()),
            channel,
            http,
            base: server.http_url(),
            server,
        }
    }

    /// Stops the registry and waits until it has let go of its store.
    async fn stop(mut self) {
        self.server.stop().await;
    }

    async fn push(&mut self, name: &str, bundle: Vec<u8>) -> Result<FunctionInfo, tonic::Status> {
        let request = PushFunctionRequest {
            name: name.into(),
            bundle,
        };
        self.grpc
            .push_function(request)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn info(&mut self, name: &str) -> Result<FunctionInfo, tonic::Status> {
        let request = GetFunctionRequest { name: name.into() };
        self.grpc
            .get_function(request)
            .await
            .map(tonic::Response::into_inner)
    }

    fn get(&self, name: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}/functions/{name}", self.base))
    }
}

fn bundle(body: &str) -> Vec<u8> {
    TarBuilder::new()
        .file(
            "f.py",
            format!("def f(event):\n    return {body}\n").as_bytes(),
        )
        .bundle()
}

fn header(response: &reqwest::Response, name: impl reqwest::header::AsHeaderName) -> &str {
    response
        .headers()
        .get(name)
        .expect("header present")
        .to_str()
        .expect("ascii header")
}

fn http_date(modified_unix_ms: i64) -> String {
    let secs = u64::try_from(modified_unix_ms / 1000).expect("after 1970");
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

#[tokio::test]
async fn serves_pushed_bundles_with_validators_and_304s() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = Registry::start(dir.path()).await;

    let v1 = bundle("1");
    let info = registry.push("hello", v1.clone()).await.expect("push");
    assert_eq!(info.version, 1);
    assert_eq!(info.bundle_bytes, v1.len() as u64);
    let tag = info
        .etag
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'));
    let (version, hash) = tag
        .and_then(|t| t.split_once('-'))
        .expect("\"version-hash\"");
    assert_eq!(version, "1");
    assert!(
        hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{}",
        info.etag
    );
    assert_eq!(
        info.config.as_ref().map(|c| c.entry_file.as_str()),
        Some("f.py")
    );

    let got = registry.get("hello").send().await.expect("get");
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(header(&got, CONTENT_TYPE), "application/gzip");
    assert_eq!(header(&got, ETAG), info.etag);
    assert_eq!(
        header(&got, LAST_MODIFIED),
        http_date(info.modified_unix_ms)
    );
    assert_eq!(header(&got, "x-sock-version"), "1");
    let last_modified = header(&got, LAST_MODIFIED).to_string();
    assert_eq!(got.bytes().await.expect("body"), v1);

    let head = registry
        .http
        .head(format!("{}/functions/hello", registry.base))
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, ETAG), info.etag);
    assert_eq!(header(&head, CONTENT_LENGTH), v1.len().to_string());
    assert!(head.bytes().await.expect("body").is_empty());

    let weak = format!("W/{}", info.etag);
    let listed = format!("\"0-nope\", {}", info.etag);
    for tag in [info.etag.as_str(), weak.as_str(), listed.as_str(), "*"] {
        let cached = registry
            .get("hello")
            .header(IF_NONE_MATCH, tag)
            .send()
            .await
            .expect("get");
        assert_eq!(
            cached.status(),
            StatusCode::NOT_MODIFIED,
            "If-None-Match: {tag}"
        );
        assert_eq!(header(&cached, ETAG), info.etag);
        assert_eq!(header(&cached, LAST_MODIFIED), last_modified);
        assert_eq!(header(&cached, "x-sock-version"), "1");
        assert!(cached.bytes().await.expect("body").is_empty());
    }
    let since = registry
        .get("hello")
        .header(IF_MODIFIED_SINCE, &last_modified)
        .send()
        .await
        .expect("get");
    assert_eq!(since.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&since, ETAG), info.etag);
    let older = http_date(info.modified_unix_ms - 1000);
    let stale = registry
        .get("hello")
        .header(IF_MODIFIED_SINCE, older)
        .send()
        .await
        .expect("get");
    assert_eq!(stale.status(), StatusCode::OK);

    let v2 = bundle("2");
    let next = registry
        .push("hello", v2.clone())
        .await
        .expect("push again");
    assert_eq!(next.version, 2);
    assert_ne!(next.etag, info.etag);
    assert!(next.modified_unix_ms >= info.modified_unix_ms);

    let refreshed = registry
        .get("hello")
        .header(IF_NONE_MATCH, &info.etag)
        .send()
        .await
        .expect("get");
    assert_eq!(
        refreshed.status(),
        StatusCode::OK,
        "the old ETag must not give 304"
    );
    assert_eq!(header(&refreshed, ETAG), next.etag);
    assert_eq!(header(&refreshed, "x-sock-version"), "2");
    assert_eq!(refreshed.bytes().await.expect("body"), v2);

    // If-None-Match decides when present, even if the date says "fresh".
    let both = registry
        .get("hello")
        .header(IF_NONE_MATCH, &info.etag)
        .header(IF_MODIFIED_SINCE, http_date(next.modified_unix_ms + 60_000))
        .send()
        .await
        .expect("get");
    assert_eq!(both.status(), StatusCode::OK);
}

#[tokio::test]
async fn refuses_hostile_bundles_and_keeps_serving_the_previous_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = Registry::start(dir.path()).await;
    let good = bundle("'good'");
    let info = registry.push("victim", good.clone()).await.expect("push");

    for hostile in hostile_bundles() {
        let status = registry
            .push("victim", hostile.bundle)
            .await
            .expect_err(hostile.kind);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{}: {}",
            hostile.kind,
            status.message()
        );
        assert!(
            status.message().contains(hostile.message),
            "{}: got '{}'",
            hostile.kind,
            status.message()
        );
    }

    let served = registry.get("victim").send().await.expect("get");
    assert_eq!(header(&served, ETAG), info.etag);
    assert_eq!(served.bytes().await.expect("body"), good);
    assert_eq!(registry.info("victim").await.expect("info"), info);
    let after = registry
        .push("victim", bundle("'better'"))
        .await
        .expect("push");
    assert_eq!(after.version, 2, "refused pushes use up no version");

    let status = registry.push("Victim!", good).await.expect_err("bad name");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(ErrorKind::stamped(&status), Some(ErrorKind::InvalidRequest));
    assert!(
        status
            .message()
            .starts_with("invalid function name 'Victim!'"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn bundles_over_the_limit_are_refused_clearly_or_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = Registry::start_with(Config {
        data_dir: dir.path().to_path_buf(),
        max_bundle_mb: 1,
        ..Config::default()
    })
    .await;

    let status = registry
        .push("big", incompressible(3 << 19))
        .await
        .expect_err("over limit");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "bundle is 1.5 MiB, over the limit of 1 MiB"
    );

    let status = registry
        .push("big", incompressible(3 << 20))
        .await
        .expect_err("far over");
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert_eq!(status.message(), "bundle is far over the limit of 1 MiB");
    assert_eq!(
        registry
            .info("big")
            .await
            .expect_err("nothing stored")
            .code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn limits_over_the_operators_ceiling_are_refused_at_push() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = Registry::start_with(Config {
        data_dir: dir.path().to_path_buf(),
        ceilings: sock_service::Ceilings {
            max_memory_mb: 512,
            ..sock_service::Ceilings::default()
        },
        ..Config::default()
    })
    .await;
    let asking = |memory_mb: u64| {
        TarBuilder::new()
            .file("f.py", b"def f(event):\n    return 1\n")
            .file(
                "ol.yaml",
                format!("limits:\n  memory_mb: {memory_mb}\n").as_bytes(),
            )
            .bundle()
    };

    let status = registry
        .push("greedy", asking(1024))
        .await
        .expect_err("over the ceiling");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "ol.yaml asks for limits.memory_mb = 1024, over this platform's ceiling of 512 (max_memory_mb)"
    );
    assert_eq!(
        registry
            .info("greedy")
            .await
            .expect_err("nothing stored")
            .code(),
        Code::NotFound
    );

    let info = registry
        .push("greedy", asking(512))
        .await
        .expect("at the ceiling");
    assert_eq!(info.version, 1, "the refused push used no version");
    let limits = info.config.and_then(|c| c.limits).expect("limits");
    assert_eq!(limits.memory_mb, 512);
}

#[tokio::test]
async fn deleted_functions_are_gone_and_versions_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = Registry::start(dir.path()).await;
    registry.push("gone", bundle("1")).await.expect("push");
    registry.push("gone", bundle("2")).await.expect("push");

    registry
        .grpc
        .delete_function(DeleteFunctionRequest {
            name: "gone".into(),
        })
        .await
        .expect("delete");
    let missing = registry.get("gone").send().await.expect("get");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let text = missing.text().await.expect("body");
    assert_eq!(
        text,
        "function 'gone' does not exist; push it with `sock push`"
    );
    let status = registry.info("gone").await.expect_err("deleted");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(ErrorKind::stamped(&status), Some(ErrorKind::NotFound));
    assert_eq!(status.message(), text);
    let again = registry
        .grpc
        .delete_function(DeleteFunctionRequest {
            name: "gone".into(),
        })
        .await;
    assert_eq!(again.expect_err("already deleted").code(), Code::NotFound);

    let back = registry.push("gone", bundle("3")).await.expect("push");
    assert_eq!(back.version, 3, "a version number is never reused");
    let served = registry.get("gone").send().await.expect("get");
    assert_eq!(header(&served, "x-sock-version"), "3");
}

#[tokio::test]
async fn serves_the_exact_version_asked_while_it_is_current_or_previous() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = Registry::start(dir.path()).await;
    let (http, base) = (registry.http.clone(), registry.base.clone());
    let at = |version: &str| http.get(format!("{base}/functions/exact/versions/{version}"));
    let one = registry.push("exact", bundle("1")).await.expect("push");
    let two = registry.push("exact", bundle("2")).await.expect("push");

    for (info, body) in [(&one, bundle("1")), (&two, bundle("2"))] {
        let got = at(&info.version.to_string()).send().await.expect("get");
        assert_eq!(got.status(), StatusCode::OK, "version {}", info.version);
        assert_eq!(header(&got, "x-sock-version"), info.version.to_string());
        assert_eq!(header(&got, ETAG), info.etag);
        assert_eq!(
            header(&got, LAST_MODIFIED),
            http_date(info.modified_unix_ms)
        );
        assert_eq!(got.bytes().await.expect("body"), body);
    }

    // A third push drops version 1; version 4 does not exist yet.
    registry.push("exact", bundle("3")).await.expect("push");
    for asked in ["1", "4"] {
        let gone = at(asked).send().await.expect("get");
        assert_eq!(gone.status(), StatusCode::NOT_FOUND, "version {asked}");
        assert_eq!(
            gone.text().await.expect("body"),
            format!(
                "function 'exact' has no version {asked} here: the registry keeps the current \
                 version (3) and the one before it"
            )
        );
    }
    let not_a_number = at("two").send().await.expect("get");
    assert_eq!(not_a_number.status(), StatusCode::BAD_REQUEST);
    let unknown = http
        .get(format!("{base}/functions/nobody/versions/1"))
        .send()
        .await
        .expect("get");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn lists_functions_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = Registry::start(dir.path()).await;
    assert!(
        registry
            .grpc
            .list_functions(ListFunctionsRequest {})
            .await
            .expect("list")
            .into_inner()
            .functions
            .is_empty()
    );
    registry.push("beta", bundle("1")).await.expect("push");
    registry.push("alpha", bundle("1")).await.expect("push");
    registry.push("beta", bundle("2")).await.expect("push");
    let listed = registry
        .grpc
        .list_functions(ListFunctionsRequest {})
        .await
        .expect("list")
        .into_inner()
        .functions;
    let summary: Vec<(&str, u64)> = listed
        .iter()
        .map(|f| (f.name.as_str(), f.version))
        .collect();
    assert_eq!(summary, [("alpha", 1), ("beta", 2)]);
}

#[tokio::test]
async fn http_refuses_other_methods_bad_names_and_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = Registry::start(dir.path()).await;
    registry.push("f", bundle("1")).await.expect("push");

    let post = registry
        .http
        .post(format!("{}/functions/f", registry.base))
        .send()
        .await
        .expect("post");
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&post, "allow"), "GET, HEAD");

    let bad = registry.get("Not%20Valid").send().await.expect("get");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(
        bad.text()
            .await
            .expect("body")
            .starts_with("invalid function name 'Not Valid'")
    );

    let elsewhere = registry
        .http
        .get(format!("{}/bundles/f", registry.base))
        .send()
        .await
        .expect("get");
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn grpc_health_reports_the_registry_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(dir.path()).await;
    let mut health = HealthClient::new(registry.channel.clone());
    let request = HealthCheckRequest {
        service: "sock.v1.Registry".into(),
    };
    let status = health
        .check(request)
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn functions_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = Registry::start(dir.path()).await;
    registry.push("durable", bundle("1")).await.expect("push");
    let before = registry.push("durable", bundle("2")).await.expect("push");
    registry.stop().await;

    let mut registry = Registry::start(dir.path()).await;
    assert_eq!(registry.info("durable").await.expect("info"), before);
    let served = registry.get("durable").send().await.expect("get");
    assert_eq!(header(&served, ETAG), before.etag);
    assert_eq!(served.bytes().await.expect("body"), bundle("2"));
    assert_eq!(
        registry
            .push("durable", bundle("3"))
            .await
            .expect("push")
            .version,
        3
    );
    registry.stop().await;
}

/// `request` with `authorization: Bearer <token>`.
fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

#[tokio::test]
async fn tokens_guard_the_admin_api_reads_and_the_bundle_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = Registry::start_with(Config {
        data_dir: dir.path().to_path_buf(),
        admin_token: Some("admin-s3cret".into()),
        node_token: Some("node-s3cret".into()),
        ..Config::default()
    })
    .await;
    let code = || bundle("def f(event):\n    return 1\n");
    let refused = registry.push("hello", code()).await.expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("missing or wrong admin token"),
        "{refused:?}"
    );
    let push = || PushFunctionRequest {
        name: "hello".into(),
        bundle: code(),
    };
    let refused = registry
        .grpc
        .push_function(with_token(push(), "node-s3cret"))
        .await
        .expect_err("the node token does not push");
    assert_eq!(refused.code(), Code::Unauthenticated);
    registry
        .grpc
        .push_function(with_token(push(), "admin-s3cret"))
        .await
        .expect("with the admin token");

    // Reads are the nodes' and the operator's: one function (gateways,
    // sandboxd) and the list (gateways, for cron and Kafka triggers).
    let list = registry
        .grpc
        .list_functions(ListFunctionsRequest {})
        .await
        .expect_err("no token");
    assert_eq!(list.code(), Code::Unauthenticated);
    let get = registry.info("hello").await.expect_err("no token");
    assert_eq!(get.code(), Code::Unauthenticated);
    for token in ["node-s3cret", "admin-s3cret"] {
        let listed = registry
            .grpc
            .list_functions(with_token(ListFunctionsRequest {}, token))
            .await
            .expect("a node lists functions");
        assert_eq!(listed.into_inner().functions.len(), 1);
        let info = registry
            .grpc
            .get_function(with_token(
                GetFunctionRequest {
                    name: "hello".into(),
                },
                token,
            ))
            .await
            .expect("a node reads one function");
        assert_eq!(info.into_inner().version, 1);
    }

    // Cron firings are claimed by gateways, with the node token: the
    // first claimant of a fire time wins it.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    let claim = |holder: &str| ClaimFiringRequest {
        name: "hello".into(),
        schedule: "* * * * *".into(),
        fire_at_unix_ms: i64::try_from(now_ms).expect("fits"),
        holder: holder.into(),
    };
    let refused = registry
        .grpc
        .claim_firing(claim("gateway-1"))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    for (holder, won) in [
        ("gateway-1", true),
        ("gateway-2", false),
        ("gateway-1", true),
    ] {
        let answer = registry
            .grpc
            .claim_firing(with_token(claim(holder), "node-s3cret"))
            .await
            .expect("a node claims a firing");
        assert_eq!(answer.into_inner().claimed, won, "{holder}");
    }

    // Bundles hold code and ol.yaml: the cache's, with the node token.
    let anonymous = registry.get("hello").send().await.expect("answer");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    let text = anonymous.text().await.expect("body");
    assert!(text.contains("missing or wrong node token"), "{text}");
    assert!(!text.contains("def f"), "{text}");
    let wrong = registry
        .get("hello")
        .bearer_auth("node-s3creX")
        .send()
        .await
        .expect("answer");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let served = registry
        .get("hello")
        .bearer_auth("node-s3cret")
        .send()
        .await
        .expect("answer");
    assert_eq!(served.status(), StatusCode::OK);
    // A version by number is guarded as the latest is.
    let by_version = |token: Option<&str>| {
        let request = registry
            .http
            .get(format!("{}/functions/hello/versions/1", registry.base));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };
    for token in [None, Some("node-s3creX")] {
        let refused = by_version(token).send().await.expect("answer");
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        let text = refused.text().await.expect("body");
        assert!(!text.contains("def f"), "{text}");
    }
    let served = by_version(Some("node-s3cret"))
        .send()
        .await
        .expect("answer");
    assert_eq!(served.status(), StatusCode::OK);

    let delete = registry
        .grpc
        .delete_function(DeleteFunctionRequest {
            name: "hello".into(),
        })
        .await
        .expect_err("no token");
    assert_eq!(delete.code(), Code::Unauthenticated);

    // Watching versions is the gateways', with the node token.
    let watch = registry
        .grpc
        .watch_functions(WatchFunctionsRequest {})
        .await
        .expect_err("no token");
    assert_eq!(watch.code(), Code::Unauthenticated);
    let mut watched = registry
        .grpc
        .watch_functions(with_token(WatchFunctionsRequest {}, "node-s3cret"))
        .await
        .expect("a node watches")
        .into_inner();
    let live = watched.message().await.expect("a message");
    assert_eq!(live.map(|c| c.name), Some(String::new()), "live");
    registry.stop().await;
}

#[tokio::test]
async fn the_admin_api_refuses_a_public_address_without_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grpc = TcpListener::bind("0.0.0.0:0").await.expect("bind grpc");
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let refused = sock_registry::run(config.clone(), grpc, http, CancellationToken::new())
        .await
        .expect_err("no token on 0.0.0.0");
    assert!(
        refused
            .to_string()
            .contains("refusing to serve the registry on 0.0.0.0:"),
        "{refused}"
    );
    // With tokens, it starts.
    let grpc = TcpListener::bind("0.0.0.0:0").await.expect("bind grpc");
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let mut registry = sock_testkit::registry::Registry::serve(
        Config {
            admin_token: Some("admin".into()),
            node_token: Some("node".into()),
            ..config
        },
        grpc,
        http,
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(registry.is_running(), "serving");
    registry.stop().await;
}

#[tokio::test]
async fn watchers_hear_of_each_push_and_delete_and_the_watch_ends_with_the_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut registry = Registry::start(dir.path()).await;
    let mut watched = registry
        .grpc
        .watch_functions(WatchFunctionsRequest {})
        .await
        .expect("watch")
        .into_inner();
    let mut next = async || {
        let change = tokio::time::timeout(Duration::from_secs(10), watched.message())
            .await
            .expect("announced within 10 s")
            .expect("a message")
            .expect("the watch goes on");
        (change.name, change.version)
    };
    assert_eq!(next().await, (String::new(), 0), "first: the watch is live");
    registry.push("echo", bundle("1")).await.expect("push");
    registry.push("other", bundle("1")).await.expect("push");
    registry
        .push("echo", b"not a bundle".to_vec())
        .await
        .expect_err("refused");
    registry.push("echo", bundle("2")).await.expect("push");
    registry
        .grpc
        .delete_function(DeleteFunctionRequest {
            name: "other".into(),
        })
        .await
        .expect("delete");
    let mut heard = Vec::new();
    for _ in 0..4 {
        heard.push(next().await);
    }
    assert_eq!(
        heard,
        [
            ("echo".to_string(), 1),
            ("other".to_string(), 1),
            ("echo".to_string(), 2),
            ("other".to_string(), 0),
        ],
        "each change once, in order; a refused push changes nothing"
    );
    // An open watch does not hold the registry's shutdown.
    tokio::time::timeout(Duration::from_secs(10), registry.stop())
        .await
        .expect("the registry stops with a watch open");
    let after = tokio::time::timeout(Duration::from_secs(10), watched.message())
        .await
        .expect("the watch ends");
    assert!(matches!(after, Ok(None) | Err(_)), "{after:?}");
}
