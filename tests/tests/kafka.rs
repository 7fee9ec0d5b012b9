//! Kafka triggers through a real broker (`tansu`): messages reach a WSGI app
//! with OpenLambda's `X-Kafka-*` headers and an f(event) function as its
//! event, a function that raises is passed over, an app seeks with
//! `X-Kafka-Seek-Offset`, and a gateway stopped in the middle of a topic
//! and started again loses no message (at least once: duplicates are
//! allowed, and counted). A trigger naming a server the operator did not
//! list in `kafka_brokers` is never connected to.
//!
//! What the functions received is read back from their logs: each prints
//! one JSON line per call.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sock_cli::tokens::Kind;
use sock_testkit::cluster::{Cluster, have_root};
use sock_testkit::gateway::Gateway;
use sock_testkit::kafka::Broker;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Generous: a cold start, a group join and a poll of the registry.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(90);

/// The gateway looks for functions with Kafka triggers this often.
const POLL_MS: &str = "200";

fn ol_yaml(bootstrap_server: &str, topic: &str) -> String {
    format!(
        "triggers:\n  http:\n    - method: POST\n  kafka:\n    - bootstrap_servers:\n        \
         - \"{bootstrap_server}\"\n      topics:\n        - \"{topic}\"\n      \
         auto_offset_reset: \"earliest\"\n"
    )
}

/// Every line `function` printed, each parsed as JSON.
async fn printed(cluster: &Cluster, function: &str) -> Vec<Value> {
    cluster
        .logs(function)
        .await
        .into_iter()
        .filter(|line| line.stream == "stdout")
        .map(|line| serde_json::from_str(&line.line).unwrap_or(Value::String(line.line)))
        .collect()
}

/// Waits until `done` holds for what `function` printed; answers it.
async fn wait_printed(
    cluster: &Cluster,
    function: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let lines = printed(cluster, function).await;
        if done(&lines) {
            return lines;
        }
        assert!(
            started.elapsed() < DELIVERY_TIMEOUT,
            "{function} never printed {what}; it printed {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn gateway_metrics(cluster: &Cluster) -> String {
    reqwest::Client::new()
        .get(format!("{}/metrics", cluster.endpoints.gateway_http))
        .bearer_auth(cluster.token(Kind::Admin))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Prints what it got as OpenLambda's kafka-metadata example reads it.
const WSGI_APP: &str = r#"
import json

def app(environ, start_response):
    print(json.dumps({
        "value": environ["wsgi.input"].read().decode(),
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "content_type": environ.get("CONTENT_TYPE"),
        "topic": environ.get("HTTP_X_KAFKA_TOPIC"),
        "partition": environ.get("HTTP_X_KAFKA_PARTITION"),
        "offset": environ.get("HTTP_X_KAFKA_OFFSET"),
        "group": environ.get("HTTP_X_KAFKA_GROUP_ID"),
    }), flush=True)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"#;

/// f(event): prints the event; raises on n == 3.
const F_EVENT: &str = r#"
import json

def f(event):
    print(json.dumps(event), flush=True)
    if event["n"] == 3:
        raise ValueError("three")
    return event
"#;

/// Asks, once, to read its partition again from the start.
const SEEKING_APP: &str = r#"
import json

seeked = False

def app(environ, start_response):
    global seeked
    value = environ["wsgi.input"].read().decode()
    print(json.dumps({"value": value, "offset": environ["HTTP_X_KAFKA_OFFSET"]}), flush=True)
    headers = [("Content-Type", "text/plain")]
    if value == "rewind" and not seeked:
        seeked = True
        headers.append(("X-Kafka-Seek-Offset", "0"))
    start_response("200 OK", headers)
    return [b""]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn kafka_messages_reach_a_wsgi_app_and_an_f_event_function_and_an_app_seeks() {
    if !have_root() {
        return;
    }
    let Some(broker) = Broker::start() else {
        return;
    };
    broker.create_topic("orders", 2).await;
    broker.create_topic("replay", 1).await;
    let cluster = Cluster::start_with_env(&[
        ("SOCK_GATEWAY_KAFKA_POLL_INTERVAL_MS", POLL_MS),
        ("SOCK_GATEWAY_KAFKA_BROKERS", &broker.addr),
    ]);
    let orders = ol_yaml(&broker.addr, "orders");
    for (name, code) in [("kafka-app", WSGI_APP), ("kafka-f", F_EVENT)] {
        cluster
            .push(name, &[("f.py", code), ("ol.yaml", &orders)])
            .await
            .unwrap_or_else(|e| panic!("push {name}: {e}"));
    }
    cluster
        .push(
            "kafka-seek",
            &[
                ("f.py", SEEKING_APP),
                ("ol.yaml", &ol_yaml(&broker.addr, "replay")),
            ],
        )
        .await
        .expect("push kafka-seek");

    let values: Vec<String> = (0..6).map(|n| json!({"n": n}).to_string()).collect();
    broker.produce("orders", &values).await;
    let replay: Vec<String> = ["a", "b", "rewind", "c"].map(String::from).to_vec();
    broker.produce("replay", &replay).await;

    // The app: every value once at least, with the message's coordinates.
    let got = wait_printed(&cluster, "kafka-app", "every value", |lines| {
        values
            .iter()
            .all(|v| lines.iter().any(|l| l["value"] == v.as_str()))
    })
    .await;
    for line in &got {
        assert_eq!(line["method"], "POST", "{line}");
        assert_eq!(line["path"], "/", "{line}");
        assert_eq!(line["content_type"], "application/json", "{line}");
        assert_eq!(line["topic"], "orders", "{line}");
        assert_eq!(line["group"], "lambda-kafka-app", "{line}");
        assert!(
            ["0", "1"].contains(&line["partition"].as_str().expect("a partition")),
            "{line}"
        );
        line["offset"]
            .as_str()
            .and_then(|o| o.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("an offset in {line}"));
    }
    // Each (partition, offset) is one message.
    let mut by_position = BTreeMap::new();
    for line in &got {
        let position = (line["partition"].to_string(), line["offset"].to_string());
        let value = by_position.entry(position).or_insert(line["value"].clone());
        assert_eq!(*value, line["value"], "one offset, two values: {got:?}");
    }

    // f(event), in a group of its own: every value again, as the event;
    // the one it raised on is passed over and the rest still arrive.
    wait_printed(&cluster, "kafka-f", "every event", |lines| {
        (0..6).all(|n| lines.contains(&json!({"n": n})))
    })
    .await;

    // The seek: the partition is read again from 0, then goes on.
    let got = wait_printed(
        &cluster,
        "kafka-seek",
        "the values again after the seek",
        |lines| {
            let count = |v: &str| lines.iter().filter(|l| l["value"] == v).count();
            count("a") >= 2 && count("b") >= 2 && count("c") >= 1
        },
    )
    .await;
    let first = got
        .iter()
        .position(|l| l["value"] == "rewind")
        .expect("rewind was delivered");
    assert_eq!(got[first]["offset"], "2", "{got:?}");
    assert_eq!(
        got[first + 1]["value"],
        "a",
        "the seek went back to 0: {got:?}"
    );

    let metrics = gateway_metrics(&cluster).await;
    for counted in [
        r#"sock_gateway_kafka_messages_total{function="kafka-f",outcome="function_error"}"#,
        r#"sock_gateway_kafka_messages_total{function="kafka-f",outcome="ok"}"#,
        r#"sock_gateway_kafka_messages_total{function="kafka-app",outcome="ok"}"#,
    ] {
        assert!(metrics.contains(counted), "{counted} missing:\n{metrics}");
    }
}

/// A gateway of the test's own, on the cluster's registry and sandboxd.
async fn start_gateway(cluster: &Cluster, broker: &Broker) -> Gateway {
    Gateway::start(sock_gateway::Config {
        kafka_brokers: vec![broker.addr.clone()],
        registry_addr: cluster.endpoints.registry.clone(),
        sandboxd_addr: cluster.endpoints.sandboxd.clone(),
        node_token: Some(cluster.token(Kind::Node).into()),
        kafka_poll_interval_ms: POLL_MS.parse().expect("a number"),
        ..sock_gateway::Config::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_restart_in_the_middle_of_a_topic_loses_no_message() {
    if !have_root() {
        return;
    }
    let Some(broker) = Broker::start() else {
        return;
    };
    broker.create_topic("numbers", 3).await;
    // The cluster's own gateway consumes nothing: ours do, one at a time.
    let cluster = Cluster::start_with_env(&[("SOCK_GATEWAY_KAFKA_POLL_INTERVAL_MS", "0")]);
    // Slow enough that the first gateway stops with messages left.
    let code = "import json, time\n\ndef f(event):\n    print(json.dumps(event), flush=True)\n    \
                time.sleep(0.2)\n    return event\n";
    cluster
        .push(
            "numbers",
            &[
                ("f.py", code),
                ("ol.yaml", &ol_yaml(&broker.addr, "numbers")),
            ],
        )
        .await
        .expect("push numbers");
    let first: Vec<String> = (0..20).map(|n| json!({"n": n}).to_string()).collect();
    let second: Vec<String> = (20..40).map(|n| json!({"n": n}).to_string()).collect();
    let seen = |lines: &[Value], upto: i64| {
        (0..upto)
            .filter(|n| lines.contains(&json!({"n": n})))
            .count()
    };

    let mut gateway = start_gateway(&cluster, &broker).await;
    broker.produce("numbers", &first).await;
    wait_printed(&cluster, "numbers", "some of the first messages", |lines| {
        lines.len() >= 5
    })
    .await;
    gateway.stop().await;
    let before = printed(&cluster, "numbers").await;
    assert!(
        seen(&before, 20) < 20,
        "the first gateway consumed everything before it stopped: {before:?}"
    );

    broker.produce("numbers", &second).await;
    let mut gateway = start_gateway(&cluster, &broker).await;
    let lines = wait_printed(&cluster, "numbers", "all 40 messages", |lines| {
        seen(lines, 40) == 40
    })
    .await;
    gateway.stop().await;

    let duplicates = lines.len() - 40;
    eprintln!(
        "{} calls before the restart, {} after; {duplicates} duplicate deliveries",
        before.len(),
        lines.len() - before.len()
    );
    // The first gateway committed what it had done before it left: the
    // second went on from there rather than from the start.
    assert!(
        duplicates < first.len(),
        "{duplicates} duplicates: the offsets were not committed"
    );
}

/// A loopback port that counts the connections it accepts, standing for a
/// host a function's author would like the gateway to reach.
struct Listener {
    addr: String,
    accepted: watch::Receiver<usize>,
}

impl Listener {
    async fn start() -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let (count, accepted) = watch::channel(0);
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                count.send_modify(|n| *n += 1);
            }
        });
        Listener { addr, accepted }
    }

    fn accepted(&self) -> usize {
        *self.accepted.borrow()
    }

    async fn wait_accepted(&mut self, what: &str) {
        tokio::time::timeout(DELIVERY_TIMEOUT, self.accepted.wait_for(|n| *n > 0))
            .await
            .unwrap_or_else(|_| panic!("{what}: no connection within {DELIVERY_TIMEOUT:?}"))
            .expect("the listener runs");
    }
}

/// The attack: a function's ol.yaml names a port the operator never
/// allowed, to have the gateway connect there from its place in the
/// network. The gateway must not, and must say so. A second function,
/// whose trigger names the one allowed server, shows the gateway looked at
/// the triggers meanwhile: its consumer connects there. (Neither server
/// speaks Kafka; a TCP connection is all either test needs.)
#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_naming_a_server_not_in_kafka_brokers_is_never_connected_to() {
    if !have_root() {
        return;
    }
    let probed = Listener::start().await;
    let mut allowed = Listener::start().await;
    let cluster = Cluster::start_with_env(&[
        ("SOCK_GATEWAY_KAFKA_POLL_INTERVAL_MS", POLL_MS),
        ("SOCK_GATEWAY_KAFKA_BROKERS", &allowed.addr),
    ]);
    // Named so that the probe's consumer, were it started, would start
    // first: the gateway starts them in order of name.
    for (name, server) in [
        ("kafka-probe", &probed.addr),
        ("kafka-trusted", &allowed.addr),
    ] {
        cluster
            .push(
                name,
                &[("f.py", F_EVENT), ("ol.yaml", &ol_yaml(server, "t"))],
            )
            .await
            .unwrap_or_else(|e| panic!("push {name}: {e}"));
    }

    allowed
        .wait_accepted("the allowed trigger's consumer never connected")
        .await;
    // Were the probe's consumer started, it would have been no later than
    // the trusted one's (pushed first, and first by name within a poll);
    // a consumer connects within milliseconds, and a few more polls give
    // one started late every chance to.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        probed.accepted(),
        0,
        "the gateway connected to a server no operator allowed"
    );
    let refused =
        r#"sock_gateway_kafka_triggers_total{function="kafka-probe",outcome="refused"} 1"#;
    let started = Instant::now();
    loop {
        let metrics = gateway_metrics(&cluster).await;
        if metrics.contains(refused) {
            break;
        }
        assert!(
            started.elapsed() < DELIVERY_TIMEOUT,
            "{refused} missing:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
