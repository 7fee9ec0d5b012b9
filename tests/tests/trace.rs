//! One invocation is one trace: spans from all four services, exported
//! over OTLP, share a trace id and hang off the gateway's span.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sock_proto::v1::InvokeRequest;
use sock_testkit::cluster::{Cluster, have_root};
use sock_testkit::functions::example;
use sock_testkit::otlp::{OtlpReceiver, Span};

const SERVICES: [&str; 4] = [
    "sock-gateway",
    "sock-registry",
    "sock-cache",
    "sock-sandboxd",
];

/// Trace ids whose spans come from all four services and have all
/// arrived: the root span (the gateway's, which ends last) and the parent
/// of every span. Each service exports in its own batches, so a trace is
/// only complete once every service's last batch is in.
fn complete_traces(spans: &[Span]) -> Vec<String> {
    let mut traces: BTreeMap<&str, Vec<&Span>> = BTreeMap::new();
    for span in spans {
        traces.entry(span.trace_id.as_str()).or_default().push(span);
    }
    traces
        .into_iter()
        .filter(|(_, trace)| {
            let ids: BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
            let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
            SERVICES.iter().all(|s| services.contains(s))
                && trace.iter().any(|s| s.parent_id.is_none())
                && trace
                    .iter()
                    .filter_map(|s| s.parent_id.as_deref())
                    .all(|parent| ids.contains(parent))
        })
        .map(|(trace, _)| trace.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_invocation_is_one_trace_across_all_four_services() {
    if !have_root() {
        return;
    }
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let cluster = Cluster::start_with_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    cluster
        .push_bundle(
            "echo",
            sock_bundle::pack(&example("echo")).expect("pack echo"),
        )
        .await
        .expect("push echo");
    let response = cluster
        .gateway()
        .await
        .invoke(InvokeRequest {
            function: "echo".into(),
            payload: b"{\"traced\":true}".to_vec(),
            timeout_ms: None,
        })
        .await
        .expect("invoke echo");
    let call_id = response.metadata().get("x-sock-call-id").cloned();

    let spans = receiver
        .wait_for(
            |spans| !complete_traces(spans).is_empty(),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|timeout| {
            let seen: BTreeSet<_> = timeout
                .seen
                .iter()
                .map(|s| format!("{} {} {}", s.service, s.trace_id, s.name))
                .collect();
            panic!("no trace with spans from all four services; saw:\n{seen:#?}")
        });
    let traces = complete_traces(&spans);
    assert_eq!(traces.len(), 1, "exactly one invocation trace: {traces:?}");
    let trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == traces[0]).collect();

    // Complete means every span's parent is in the trace; with exactly one
    // root, that root is the gateway's server span.
    let roots: Vec<&&Span> = trace.iter().filter(|s| s.parent_id.is_none()).collect();
    assert_eq!(roots.len(), 1, "one root span: {trace:#?}");
    assert_eq!(roots[0].service, "sock-gateway");
    if let Some(call_id) = call_id {
        let call_id = call_id.to_str().expect("ascii call id");
        assert!(
            trace
                .iter()
                .any(|s| s.attributes.values().any(|v| v == call_id)),
            "the call id {call_id} appears in the trace"
        );
    } else {
        panic!("the gateway returns the call id in x-sock-call-id");
    }
    // The function's own run is a span of sandboxd.
    assert!(
        trace
            .iter()
            .any(|s| s.service == "sock-sandboxd" && s.name == "function.run"),
        "a function.run span: {:#?}",
        trace
            .iter()
            .map(|s| (&s.service, &s.name))
            .collect::<Vec<_>>()
    );
}
