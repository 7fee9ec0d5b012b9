//! Prometheus `/metrics` of all four services, through the real processes
//! `sock up` starts: the names are there and the counters follow the calls.
use sock_cli::tokens::Kind;
use sock_proto::v1::cache_client::CacheClient;
use sock_proto::v1::invoke_response::Outcome;
use sock_proto::v1::{FunctionRef, InvokeRequest, PrepareRequest};
use sock_testkit::cluster::{Cluster, have_root};

/// The body of `GET <base>/metrics`, after checking that it wants the
/// admin token and is OpenMetrics text.
async fn scrape(cluster: &Cluster, base: &str) -> String {
    let url = format!("{base}/metrics");
    let http = reqwest::Client::new();
    let anonymous = http.get(&url).send().await.expect("GET");
    assert_eq!(anonymous.status(), 401, "{url} answers without a token");
    let response = http
        .get(&url)
        .bearer_auth(cluster.token(Kind::Admin))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {base}/metrics: {e}"));
    assert_eq!(response.status(), 200, "{base}/metrics");
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    response.text().await.expect("metrics text")
}

/// The value of the sample `series` (name and labels exactly as exposed),
/// or None when the text has no such line.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_counts_what_a_call_did() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start();
    let endpoints = cluster.endpoints.clone();
    let before = [
        scrape(&cluster, &endpoints.registry_metrics).await,
        scrape(&cluster, &endpoints.cache_metrics).await,
        scrape(&cluster, &endpoints.sandboxd_metrics).await,
    ];
    assert_eq!(
        value(&before[2], "sock_sandboxd_calls_total"),
        0.0,
        "{}",
        before[2]
    );

    cluster
        .push("echo", &[("f.py", "def f(event):\n    return event\n")])
        .await
        .expect("push");
    let mut gateway = cluster.gateway().await;
    for n in 0..2 {
        let answer = gateway
            .invoke(InvokeRequest {
                function: "echo".into(),
                payload: n.to_string().into_bytes(),
                timeout_ms: None,
            })
            .await
            .expect("call")
            .into_inner();
        assert_eq!(answer.outcome, Some(Outcome::Result(n.to_string().into())));
    }
    // The cache still holds the version it fetched for the first call, and
    // a version never changes: a hit, however long ago that was.
    let prepared = CacheClient::new(cluster.authed(&endpoints.cache, Kind::Node).await)
        .prepare(PrepareRequest {
            function: Some(FunctionRef {
                name: "echo".into(),
                version: 1,
            }),
            ..PrepareRequest::default()
        })
        .await
        .expect("prepare")
        .into_inner();
    assert_eq!(prepared.function.map(|f| f.version), Some(1));

    let gateway_text = scrape(&cluster, &endpoints.gateway_http).await;
    assert_eq!(
        value(
            &gateway_text,
            r#"sock_gateway_calls_total{function="echo",outcome="ok"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            &gateway_text,
            r#"sock_gateway_call_duration_seconds_count{function="echo"}"#
        ),
        2.0
    );
    assert!(sample(&gateway_text, "sock_gateway_queue_depth").is_some());

    let registry = scrape(&cluster, &endpoints.registry_metrics).await;
    assert_eq!(
        value(&registry, r#"sock_registry_pushes_total{outcome="ok"}"#),
        1.0
    );
    // The first call's cold start fetched the bundle; nothing else did.
    assert_eq!(
        value(&registry, r#"sock_registry_fetches_total{answer="bundle"}"#),
        1.0
    );

    let cache = scrape(&cluster, &endpoints.cache_metrics).await;
    assert_eq!(
        value(&cache, r#"sock_cache_fetches_total{answer="bundle"}"#),
        1.0
    );
    assert_eq!(value(&cache, "sock_cache_hits_total"), 1.0, "{cache}");

    let sandboxd = scrape(&cluster, &endpoints.sandboxd_metrics).await;
    assert_eq!(value(&sandboxd, "sock_sandboxd_calls_total"), 2.0);
    assert_eq!(
        value(&sandboxd, r#"sock_sandboxd_starts_total{kind="cold"}"#),
        1.0
    );
    assert_eq!(
        value(&sandboxd, r#"sock_sandboxd_starts_total{kind="warm"}"#),
        1.0
    );
    // The sandbox that served both calls is still there, idle or paused.
    let live: f64 = ["idle", "paused", "running"]
        .iter()
        .map(|state| {
            value(
                &sandboxd,
                &format!(r#"sock_sandboxd_sandboxes{{state="{state}"}}"#),
            )
        })
        .sum();
    assert!(live >= 1.0, "{sandboxd}");
    let total = value(
        &sandboxd,
        r#"sock_sandboxd_pool_memory_bytes{kind="total"}"#,
    );
    let reserved = value(
        &sandboxd,
        r#"sock_sandboxd_pool_memory_bytes{kind="reserved"}"#,
    );
    let free = value(&sandboxd, r#"sock_sandboxd_pool_memory_bytes{kind="free"}"#);
    assert!(reserved > 0.0, "a live sandbox holds memory: {sandboxd}");
    assert_eq!(total, reserved + free);
    for name in [
        r#"sock_sandboxd_pool_memory_bytes{kind="used"}"#,
        "sock_sandboxd_pool_waiting",
        "sock_sandboxd_zygote_forks_total",
        "sock_sandboxd_zygote_start_failures_total",
        "sock_sandboxd_evictions_total",
        "sock_sandboxd_zygotes",
    ] {
        assert!(
            sample(&sandboxd, name).is_some(),
            "no {name} in\n{sandboxd}"
        );
    }
}
