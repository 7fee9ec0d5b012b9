//! Cron triggers with two gateways sharing one registry and one node:
//! each fire time runs exactly once across both, and a new version that
//! drops the trigger stops the firings.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sock_cli::tokens::Kind;
use sock_testkit::cluster::{Cluster, have_root};
use sock_testkit::functions::bundle;
use sock_testkit::otlp::OtlpReceiver;
use sock_testkit::process::{free_addr, start, wait_for};

const REFRESH_MS: &str = "1000";

/// A WSGI app that prints the fire time it was called for. Every second
/// (sock's seconds field), so a few firings take a few seconds; its HTTP
/// trigger takes GET only, which does not stop the cron trigger's POST.
const TICK: &str = "\
def app(environ, start_response):
    print('fired', environ['HTTP_X_SOCK_TRIGGER'], environ['HTTP_X_SOCK_CRON_FIRE_TIME'],
          environ['REQUEST_METHOD'], environ['wsgi.input'].read().decode())
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [b'ok']
";
const EVERY_SECOND: &str = "triggers:\n  http: [GET]\n  cron:\n    - schedule: \"* * * * * *\"\n";

/// Every request bounded: a stalled service fails the test with its name
/// instead of hanging it until nextest kills it.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Fire time → how many calls printed it, from every node's log of `tick`.
async fn fired(cluster: &Cluster) -> BTreeMap<String, usize> {
    tokio::time::timeout(Duration::from_secs(30), fired_unbounded(cluster))
        .await
        .expect("the gateway's Logs answered within 30 s")
}

async fn fired_unbounded(cluster: &Cluster) -> BTreeMap<String, usize> {
    let mut times = BTreeMap::new();
    for line in cluster.logs("tick").await {
        let Some(rest) = line.line.strip_prefix("fired ") else {
            continue;
        };
        // What OpenLambda's boss sends: POST with the body {}.
        let [trigger, time, method, body] = rest.split(' ').collect::<Vec<_>>()[..] else {
            panic!("unexpected line {:?}", line.line);
        };
        assert_eq!(
            (trigger, method, body),
            ("cron", "POST", "{}"),
            "{}",
            line.line
        );
        *times.entry(time.to_string()).or_default() += 1;
    }
    times
}

/// `sock_gateway_cron_firings_total` of one gateway, by outcome.
async fn firings(http: &str, token: Option<String>) -> BTreeMap<String, u64> {
    let mut request = client().get(format!("{http}/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let text = request
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let mut outcomes = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) =
            line.strip_prefix("sock_gateway_cron_firings_total{function=\"tick\",outcome=\"")
        {
            let (outcome, count) = rest.split_once("\"} ").expect("a counter line");
            outcomes.insert(outcome.to_string(), count.parse().expect("a count"));
        }
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread")]
async fn each_fire_time_runs_once_across_two_gateways_until_the_trigger_is_dropped() {
    if !have_root() {
        return;
    }
    let receiver = OtlpReceiver::start().await;
    let otlp = receiver.endpoint();
    let cluster = Cluster::start_with_env(&[
        ("SOCK_GATEWAY_CRON_REFRESH_MS", REFRESH_MS),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    // A second gateway on the same registry and node, on loopback with no
    // tokens of its own (its /metrics is open).
    let second_grpc = format!("http://{}", free_addr());
    let second_http = format!("http://{}", free_addr());
    let _second = start(
        "sock-gateway",
        &[
            (
                "SOCK_GATEWAY_LISTEN",
                second_grpc.trim_start_matches("http://").into(),
            ),
            (
                "SOCK_GATEWAY_HTTP_LISTEN",
                second_http.trim_start_matches("http://").into(),
            ),
            (
                "SOCK_GATEWAY_REGISTRY_ADDR",
                cluster.endpoints.registry.clone(),
            ),
            (
                "SOCK_GATEWAY_SANDBOXD_ADDR",
                cluster.endpoints.sandboxd.clone(),
            ),
            ("SOCK_GATEWAY_NODE_TOKEN", cluster.token(Kind::Node)),
            ("SOCK_GATEWAY_CRON_REFRESH_MS", REFRESH_MS.into()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    );
    wait_for(&second_grpc).await;

    // Pushed through the first gateway's OpenLambda API, which tells its
    // scheduler at once; the second finds it at its next refresh.
    let pushed = client()
        .post(format!("{}/registry/tick", cluster.endpoints.gateway_http))
        .bearer_auth(cluster.token(Kind::Admin))
        .body(bundle(&[("f.py", TICK), ("ol.yaml", EVERY_SECOND)]))
        .send()
        .await
        .expect("push");
    assert_eq!(pushed.status(), reqwest::StatusCode::CREATED);

    let started = Instant::now();
    let times = loop {
        let times = fired(&cluster).await;
        if times.len() >= 5 {
            break times;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "5 firings within 20 s; saw {times:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for time in times.keys() {
        assert!(
            time.ends_with(".000Z"),
            "fire times are whole seconds: {time}"
        );
    }

    // A new version without the trigger (pushed to the registry directly,
    // so both gateways learn it by refreshing) stops the firings.
    tokio::time::timeout(
        Duration::from_secs(60),
        cluster.push("tick", &[("f.py", TICK)]),
    )
    .await
    .expect("the push answered within 60 s")
    .expect("push without the trigger");
    // Both refresh within a second; a firing claimed just before may
    // still be starting the new version's sandbox.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = fired(&cluster).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = fired(&cluster).await;
    assert_eq!(before, after, "no firing after the trigger was dropped");

    let twice: Vec<_> = after.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "fire times not run exactly once: {twice:?}"
    );

    // Both gateways went for every fire time; the registry gave each to one.
    let first = firings(
        &cluster.endpoints.gateway_http,
        Some(cluster.token(Kind::Admin)),
    )
    .await;
    let second = firings(&second_http, None).await;
    let count = |outcome: &str| {
        first.get(outcome).copied().unwrap_or(0) + second.get(outcome).copied().unwrap_or(0)
    };
    assert_eq!(
        count("ok"),
        u64::try_from(after.len()).expect("fits"),
        "every firing one gateway won ran once: first {first:?}, second {second:?}"
    );
    assert_eq!(
        count("failed") + count("claim_failed"),
        0,
        "{first:?} {second:?}"
    );
    assert!(
        count("lost") >= 1,
        "the gateways competed for the firings: first {first:?}, second {second:?}"
    );

    // Each firing is a call of its own, traced like any other and marked
    // as the cron trigger's.
    let is_cron_call = |span: &sock_testkit::otlp::Span| {
        span.name == "invoke"
            && span.attribute("sock.function") == Some("tick")
            && span.attribute("sock.trigger") == Some("cron")
    };
    let spans = receiver
        .wait_for(
            |spans| spans.iter().filter(|s| is_cron_call(s)).count() >= after.len(),
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|timeout| {
            panic!(
                "one invoke span with sock.trigger=cron per firing; saw {:#?}",
                timeout
                    .seen
                    .iter()
                    .filter(|s| s.name == "invoke")
                    .collect::<Vec<_>>()
            )
        });
    let traced: Vec<_> = spans.iter().filter(|s| is_cron_call(s)).collect();
    assert_eq!(traced.len(), after.len(), "{traced:#?}");
    assert!(
        traced
            .iter()
            .all(|s| s.parent_id.is_none() && s.service == "sock-gateway"),
        "a firing starts its own trace at a gateway: {traced:#?}"
    );
}
