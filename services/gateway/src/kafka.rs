//! Kafka triggers (`triggers.kafka` in ol.yaml, OpenLambda's format): the
//! gateway runs a consumer per trigger of every function that has one, and
//! each message becomes one call through the same path as an HTTP call
//! (`Invoker::invoke`: admission control, node choice, deadline).
//!
//! Consumers run in the gateway, not in a process of their own, so a
//! message passes the same admission control as HTTP calls, and so several
//! gateways split a topic's partitions between them (one consumer group
//! per function: `lambda-<name>`, as OpenLambda names it).
//!
//! Delivery is at least once: a message's offset is stored only after its
//! call answered, and librdkafka commits stored offsets every second and
//! when the consumer closes. A call the platform could not run (overload,
//! a node or the registry down) is tried again, never skipped; so a
//! consumer waits while the gateway is full, and that is its back-pressure.
//! A call that ran and failed (the function raised, an app answered 5xx)
//! is logged, counted and passed over, as OpenLambda does.
//!
//! The call is an HTTP POST of the message value to `/run/<name>/` with
//! OpenLambda's `X-Kafka-*` headers: a WSGI/ASGI app sees the headers, an
//! f(event) function gets the value as its JSON event. An app answering
//! `X-Kafka-Seek-Offset: N` moves its partition to offset N.
//!
//! A function's author is not trusted to choose where the gateway
//! connects: a trigger is consumed only when every one of its bootstrap
//! servers is in the operator's `kafka_brokers` (`Brokers`); any other is
//! never connected to, so ol.yaml cannot make the gateway probe hosts and
//! ports from its place in the network.
//!
//! In detail (rdkafka, with librdkafka built from source): every
//! `kafka_poll_interval_ms` (10 s; 0 = this gateway consumes nothing) the
//! gateway lists functions (registry `ListFunctions`, with the node token)
//! and starts, replaces (changed triggers) or stops a consumer per
//! `triggers.kafka` entry. `kafka_brokers` entries are `host:port`, the
//! host compared in any case; empty by default, so nothing is consumed; an
//! entry that is not `host:port` is refused at start. A refused trigger is
//! logged and counted (`sock_gateway_kafka_triggers_total{function,
//! outcome="refused"}`) once per function version, and a consumer is given
//! the servers as checked. The allowed brokers are trusted: the addresses
//! they advertise are connected to as well. Each consumer runs one call at
//! a time, in a `kafka.message` span (`sock.trigger=kafka`, topic,
//! partition, offset) above the call's `invoke` span. Retries back off from
//! 100 ms, doubling to 5 s. `X-Kafka-Seek-Offset: N` also stores N as
//! where to resume. At shutdown a consumer lets its call answer, commits
//! and leaves its group, so partitions move at once; a crash instead
//! redelivers up to a second of messages.
//! `sock_gateway_kafka_messages_total{function,outcome}` counts `ok`,
//! `function_error`, `refused` (a message no retry can help, e.g. too
//! large) and `retried`.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sock_proto::v1::registry_client::RegistryClient;
use sock_proto::v1::{
    ErrorKind, FunctionInfo, HttpHeader, HttpRequest, HttpResponse, KafkaTrigger,
    ListFunctionsRequest,
};
use sock_service::AuthedChannel;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Error, StartError};
use crate::grpc::{call_span, log_failure};
use crate::invoke::{Answer, Invocation, Invoker, Outcome};
use crate::metrics::Metrics;

/// Response header with which an app moves its partition (OpenLambda's).
const SEEK_HEADER: &str = "x-kafka-seek-offset";

/// First wait before a call the platform could not run is tried again;
/// it doubles up to `MAX_RETRY_WAIT`.
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(100);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

/// Pause after the client reports an error, so a broker that is down does
/// not make a busy loop of log lines.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The consumer group of a function's triggers, as OpenLambda derives it:
/// every gateway consuming for the function joins the same group, and
/// each function has its own offsets.
pub(crate) fn group_id(function: &str) -> String {
    format!("lambda-{function}")
}

/// The brokers function triggers may name (`kafka_brokers`), each as
/// `host:port` with the host in lowercase.
#[derive(Debug)]
pub(crate) struct Brokers(BTreeSet<String>);

impl Brokers {
    /// The allow-list of `kafka_brokers`. An entry that is not `host:port`
    /// is refused rather than left to never match, which would turn the
    /// triggers naming that broker off without a word.
    pub(crate) fn parse(entries: &[String]) -> Result<Brokers, StartError> {
        entries
            .iter()
            .map(|entry| {
                host_port(entry).map_err(|reason| StartError::InvalidConfig {
                    field: "kafka_brokers",
                    value: entry.clone(),
                    reason,
                })
            })
            .collect::<Result<_, _>>()
            .map(Brokers)
    }

    /// `trigger` with its servers as they were checked (those, and only
    /// those, are connected to), or the servers that are not allowed.
    fn admit(&self, mut trigger: KafkaTrigger) -> Result<KafkaTrigger, Vec<String>> {
        let mut refused = Vec::new();
        let mut checked = Vec::new();
        for server in trigger.bootstrap_servers {
            match host_port(&server) {
                Ok(server) if self.0.contains(&server) => checked.push(server),
                _ => refused.push(server),
            }
        }
        if !refused.is_empty() {
            return Err(refused);
        }
        trigger.bootstrap_servers = checked;
        Ok(trigger)
    }
}

/// `server` as `host:port`, trimmed, with the host in lowercase (host
/// names are not case-sensitive) and the port as a number; or why it is
/// not that. A host holding a comma, a space or a `/` is refused: to
/// librdkafka those separate servers or name a protocol.
fn host_port(server: &str) -> Result<String, String> {
    let Some((host, port)) = server.trim().rsplit_once(':') else {
        return Err("no port: give host:port, such as kafka:9092".into());
    };
    let port = match port.parse::<u16>() {
        Ok(port) if port > 0 => port,
        _ => return Err(format!("port '{port}' is not a number from 1 to 65535")),
    };
    if host.is_empty() || host.contains(|c: char| c == ',' || c == '/' || c.is_whitespace()) {
        return Err(format!("'{host}' is not a host name or address"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err("an IPv6 address goes in brackets, such as [::1]:9092".into());
    }
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

/// What a consumer needs to turn messages into calls.
pub(crate) struct Deliver {
    pub invoker: Arc<Invoker>,
    pub metrics: Arc<Metrics>,
}

/// Keeps a consumer running for each Kafka trigger that `brokers` allows
/// of each function the registry lists, polling it every `interval`, until
/// `stop`; then stops them all (each leaves its group and commits what it
/// has stored). An `interval` of zero runs no consumers.
pub(crate) async fn run(
    registry: RegistryClient<AuthedChannel>,
    deliver: Arc<Deliver>,
    brokers: Brokers,
    interval: Duration,
    stop: CancellationToken,
) {
    if interval.is_zero() {
        return;
    }
    let mut running = BTreeMap::new();
    let mut reported = BTreeMap::new();
    loop {
        match list(&registry).await {
            Ok(listed) => {
                let wanted = admit(listed, &brokers, &mut reported, &deliver.metrics);
                let plan = plan(&running, wanted);
                for name in plan.stop {
                    if let Some(consumers) = running.remove(&name) {
                        tracing::info!(function = %name, "stopping its Kafka consumers");
                        consumers.stop().await;
                    }
                }
                for (name, triggers) in plan.start {
                    tracing::info!(function = %name, triggers = triggers.len(), "starting its Kafka consumers");
                    let consumers = Consumers::start(&name, triggers, &deliver, &stop);
                    running.insert(name, consumers);
                }
            }
            // Consumers keep running as they are: an outage of the
            // registry does not stop functions already known.
            Err(status) => tracing::warn!(
                error = %crate::error::reason(&status),
                "cannot list functions for Kafka triggers; keeping the consumers as they are"
            ),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    for consumers in running.into_values() {
        consumers.stop().await;
    }
}

async fn list(
    registry: &RegistryClient<AuthedChannel>,
) -> Result<Vec<FunctionInfo>, tonic::Status> {
    Ok(registry
        .clone()
        .list_functions(ListFunctionsRequest {})
        .instrument(tracing::info_span!(
            "registry.list_functions",
            otel.kind = "client"
        ))
        .await?
        .into_inner()
        .functions)
}

/// The consumers of one function's triggers.
struct Consumers {
    triggers: Vec<KafkaTrigger>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Consumers {
    fn start(
        function: &str,
        triggers: Vec<KafkaTrigger>,
        deliver: &Arc<Deliver>,
        gateway_stop: &CancellationToken,
    ) -> Consumers {
        let stop = gateway_stop.child_token();
        let tasks = triggers
            .iter()
            .map(|trigger| {
                tokio::spawn(consume(
                    function.to_string(),
                    trigger.clone(),
                    deliver.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Consumers {
            triggers,
            stop,
            tasks,
        }
    }

    /// Stops consuming, lets a call in flight answer, and waits until every
    /// consumer has left its group.
    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a Kafka consumer task failed");
            }
        }
    }
}

/// What to change so that the consumers running are those of `listed`.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    /// Functions deleted, left without triggers, or with changed triggers.
    stop: Vec<String>,
    /// Functions new to Kafka, or with changed triggers (stopped first).
    start: Vec<(String, Vec<KafkaTrigger>)>,
}

/// The triggers of each listed function that `brokers` allows, with their
/// servers as checked. The others are logged and counted once per
/// function version: `reported` holds the version last reported of each
/// function with a refused trigger.
fn admit(
    listed: Vec<FunctionInfo>,
    brokers: &Brokers,
    reported: &mut BTreeMap<String, u64>,
    metrics: &Metrics,
) -> BTreeMap<String, Vec<KafkaTrigger>> {
    let mut wanted = BTreeMap::new();
    let mut still_refused = BTreeMap::new();
    for function in listed {
        let Some(config) = function.config else {
            continue;
        };
        let mut admitted = Vec::new();
        let mut refused = Vec::new();
        for trigger in config.kafka {
            match brokers.admit(trigger) {
                Ok(trigger) => admitted.push(trigger),
                Err(servers) => refused.push(servers),
            }
        }
        if !refused.is_empty() {
            if reported.get(&function.name) != Some(&function.version) {
                tracing::warn!(
                    function = %function.name,
                    version = function.version,
                    refused = %refused.concat().join(","),
                    "not consuming a Kafka trigger: its bootstrap servers are not all in the \
                     gateway's kafka_brokers (SOCK_GATEWAY_KAFKA_BROKERS); add them there \
                     if the function may use them"
                );
                for _ in &refused {
                    metrics.kafka_trigger_refused(&function.name);
                }
            }
            still_refused.insert(function.name.clone(), function.version);
        }
        if !admitted.is_empty() {
            wanted.insert(function.name, admitted);
        }
    }
    *reported = still_refused;
    wanted
}

fn plan(
    running: &BTreeMap<String, Consumers>,
    mut wanted: BTreeMap<String, Vec<KafkaTrigger>>,
) -> Plan {
    let mut plan = Plan::default();
    for (name, consumers) in running {
        match wanted.get(name) {
            // A new version with the same triggers keeps its consumers and
            // their place in the group: each call looks the version up.
            Some(triggers) if *triggers == consumers.triggers => {
                wanted.remove(name);
            }
            _ => plan.stop.push(name.clone()),
        }
    }
    plan.start = wanted.into_iter().collect();
    plan
}

/// Consumes one trigger until `stop`, then closes the consumer, which
/// commits the stored offsets and leaves the group so that the partitions
/// move to another gateway at once rather than after a session timeout.
async fn consume(
    function: String,
    trigger: KafkaTrigger,
    deliver: Arc<Deliver>,
    stop: CancellationToken,
) {
    let group = group_id(&function);
    let consumer = match subscribe(&trigger, &group) {
        Ok(consumer) => consumer,
        Err(error) => {
            tracing::error!(%function, %error, "cannot start a Kafka consumer");
            return;
        }
    };
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            message = consumer.recv() => message,
        };
        match message {
            Ok(message) => {
                if deliver
                    .message(&function, &group, &consumer, &message, &stop)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%function, %error, "Kafka consumer error");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(ERROR_PAUSE) => {}
                }
            }
        }
    }
    // Closing waits for the broker; keep that off the async workers.
    if let Err(e) = tokio::task::spawn_blocking(move || drop(consumer)).await {
        tracing::error!(%function, error = %e, "closing a Kafka consumer failed");
    }
    tracing::info!(%function, "Kafka consumer stopped");
}

fn subscribe(
    trigger: &KafkaTrigger,
    group: &str,
) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
    let consumer: StreamConsumer = ClientConfig::new()
        // The servers `Brokers::admit` checked, as it wrote them.
        .set("bootstrap.servers", trigger.bootstrap_servers.join(","))
        .set("group.id", group)
        .set("client.id", "sock-gateway")
        .set("auto.offset.reset", &trigger.auto_offset_reset)
        // Offsets are stored by hand once a call answered; librdkafka
        // commits what is stored, every second and on close.
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .create()?;
    let topics: Vec<&str> = trigger.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// The consumer was told to stop while a call waited to be tried again.
struct Stopped;

/// How a delivery ended, for the log and `sock_gateway_kafka_messages_total`.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// The call answered; `seek` is the offset an app asked for.
    Ok { seek: Option<i64> },
    /// The call ran and failed: logged and passed over, as OpenLambda does.
    FunctionError,
    /// The call was refused for what the message is (too large, say):
    /// trying again cannot help.
    Refused,
    /// The platform could not run the call now: try again.
    Retry,
}

impl Verdict {
    fn of(result: &Result<Answer, Error>) -> Verdict {
        match result {
            Ok(Answer {
                outcome: Outcome::Http(response),
                ..
            }) if response.status >= 500 => Verdict::FunctionError,
            Ok(Answer {
                outcome: Outcome::Http(response),
                ..
            }) => Verdict::Ok {
                seek: seek_offset(response),
            },
            Ok(Answer {
                outcome: Outcome::Result(_),
                ..
            }) => Verdict::Ok { seek: None },
            Ok(Answer {
                outcome: Outcome::Error(_),
                ..
            }) => Verdict::FunctionError,
            Err(Error::Overloaded(_)) => Verdict::Retry,
            // As when its entry file does not import (an answer above):
            // it runs no message until it is pushed again.
            Err(error) if error.kind() == ErrorKind::CannotStart => Verdict::FunctionError,
            Err(error) if error.is_platform_failure() => Verdict::Retry,
            // Deleted since the last listing: its consumer stops at the next.
            Err(Error::NotFound(_)) => Verdict::Retry,
            Err(_) => Verdict::Refused,
        }
    }

    fn as_str(&self) -> &'static str {
        match self {
            Verdict::Ok { .. } => "ok",
            Verdict::FunctionError => "function_error",
            Verdict::Refused => "refused",
            Verdict::Retry => "retried",
        }
    }
}

/// The offset in an app's `X-Kafka-Seek-Offset`, if it sent a valid one;
/// an invalid one is logged and ignored, as OpenLambda does.
fn seek_offset(response: &HttpResponse) -> Option<i64> {
    let value = &response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(SEEK_HEADER))?
        .value;
    match value.trim().parse::<i64>() {
        Ok(offset) if offset >= 0 => Some(offset),
        _ => {
            tracing::warn!(%value, "ignoring an X-Kafka-Seek-Offset that is not an offset");
            None
        }
    }
}

/// The HTTP request OpenLambda makes of a message: a POST of the value to
/// the function's root, with the message's coordinates as headers. Names
/// are lowercase, as HTTP calls arrive from hyper and as ASGI wants them;
/// WSGI and Flask read them in any case.
fn request(function: &str, group: &str, topic: &str, partition: i32, offset: i64) -> HttpRequest {
    let header = |name: &str, value: String| HttpHeader {
        name: name.to_string(),
        value,
    };
    HttpRequest {
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: vec![
            header("content-type", "application/json".into()),
            header("x-kafka-topic", topic.to_string()),
            header("x-kafka-partition", partition.to_string()),
            header("x-kafka-offset", offset.to_string()),
            header("x-kafka-group-id", group.to_string()),
        ],
        root_path: format!("/run/{function}"),
    }
}

impl Deliver {
    /// Calls `function` with one message until the call is answered (or
    /// refused for good), then stores the offset to commit: the next one,
    /// or the one an app seeked to.
    async fn message(
        &self,
        function: &str,
        group: &str,
        consumer: &StreamConsumer,
        message: &BorrowedMessage<'_>,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let span = tracing::info_span!(
            "kafka.message",
            otel.kind = "consumer",
            sock.trigger = "kafka",
            sock.function = %function,
            kafka.topic = %topic,
            kafka.partition = partition,
            kafka.offset = offset,
            kafka.group_id = %group,
        );
        let mut wait = FIRST_RETRY_WAIT;
        let verdict = loop {
            // A span per attempt, each a child of the message's.
            let (call_id, call) = span.in_scope(|| call_span(function, "kafka"));
            let invocation = Invocation {
                function: function.to_string(),
                payload: message.payload().unwrap_or_default().to_vec(),
                timeout_ms: None,
                deadline_left: None,
                http: Some(request(function, group, topic, partition, offset)),
            };
            // No method: a Kafka trigger is not one of `triggers.http`.
            let result = self
                .invoker
                .invoke(invocation, None, &call_id)
                .instrument(call.clone())
                .await;
            let verdict = Verdict::of(&result);
            self.metrics
                .record_kafka_message(function, verdict.as_str());
            span.in_scope(|| report(&verdict, &call, result, wait));
            if verdict != Verdict::Retry {
                break verdict;
            }
            tokio::select! {
                () = stop.cancelled() => return Err(Stopped),
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(MAX_RETRY_WAIT);
        };
        span.in_scope(|| {
            let stored = match verdict {
                Verdict::Ok { seek: Some(to) } => {
                    tracing::info!(seek_offset = to, "app asked to seek");
                    seek(consumer, topic, partition, to)
                }
                _ => consumer.store_offset_from_message(message),
            };
            // The partition was taken away meanwhile (a rebalance): its new
            // owner reads the message again, which at-least-once allows.
            if let Err(error) = stored {
                tracing::warn!(%error, "cannot store the offset of a Kafka message");
            }
        });
        Ok(())
    }
}

/// Logs a delivery that did not go well, once, at a level by whose fault.
fn report(verdict: &Verdict, call: &tracing::Span, result: Result<Answer, Error>, wait: Duration) {
    let error = match result {
        Err(error) => {
            log_failure(call, &error);
            error.to_string()
        }
        Ok(Answer {
            outcome: Outcome::Error(error),
            ..
        }) => error.message,
        Ok(Answer {
            outcome: Outcome::Http(response),
            ..
        }) => format!("the app answered {}", response.status),
        Ok(_) => String::new(),
    };
    match verdict {
        Verdict::Ok { .. } => {}
        Verdict::Retry => tracing::warn!(
            %error,
            retry_in_ms = wait.as_millis(),
            "Kafka message not delivered; trying again"
        ),
        Verdict::Refused => tracing::warn!(%error, "Kafka message refused; passing over it"),
        Verdict::FunctionError => {
            tracing::warn!(%error, "function failed on a Kafka message; passing over it");
        }
    }
}

/// Moves `partition` to `offset` and stores that as where to resume.
fn seek(
    consumer: &StreamConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<(), rdkafka::error::KafkaError> {
    let mut position = TopicPartitionList::new();
    position.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.store_offsets(&position)?;
    // Zero timeout: librdkafka seeks in the background instead of blocking
    // this worker thread; messages it had fetched past the old position
    // are dropped by it.
    consumer.seek(topic, partition, Offset::Offset(offset), Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use sock_proto::v1::{FunctionConfig, FunctionError};

    use super::*;

    fn trigger(topic: &str) -> KafkaTrigger {
        KafkaTrigger {
            bootstrap_servers: vec!["k:9092".into()],
            topics: vec![topic.into()],
            auto_offset_reset: "earliest".into(),
        }
    }

    fn info(name: &str, kafka: Vec<KafkaTrigger>) -> FunctionInfo {
        FunctionInfo {
            name: name.into(),
            config: Some(FunctionConfig {
                kafka,
                ..FunctionConfig::default()
            }),
            ..FunctionInfo::default()
        }
    }

    fn running(triggers: &[(&str, &str)]) -> BTreeMap<String, Consumers> {
        triggers
            .iter()
            .map(|(name, topic)| {
                let consumers = Consumers {
                    triggers: vec![trigger(topic)],
                    stop: CancellationToken::new(),
                    tasks: Vec::new(),
                };
                (name.to_string(), consumers)
            })
            .collect()
    }

    #[test]
    fn the_group_is_named_after_the_function_as_openlambda_does() {
        assert_eq!(group_id("echo"), "lambda-echo");
        assert_eq!(group_id("L0"), "lambda-L0");
    }

    #[test]
    fn consumers_follow_pushes_changes_and_deletes() {
        let running = running(&[
            ("same", "a"),
            ("changed", "a"),
            ("deleted", "a"),
            ("off", "a"),
        ]);
        let listed = vec![
            info("same", vec![trigger("a")]),
            info("changed", vec![trigger("b")]),
            info("off", Vec::new()),
            info("new", vec![trigger("a"), trigger("c")]),
            info("http-only", Vec::new()),
        ];
        let brokers = brokers(&["k:9092"]);
        let wanted = admit(listed, &brokers, &mut BTreeMap::new(), &Metrics::new());
        let plan = plan(&running, wanted);
        assert_eq!(plan.stop, ["changed", "deleted", "off"]);
        assert_eq!(
            plan.start,
            [
                ("changed".to_string(), vec![trigger("b")]),
                ("new".to_string(), vec![trigger("a"), trigger("c")]),
            ]
        );
    }

    fn brokers(entries: &[&str]) -> Brokers {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        Brokers::parse(&entries).expect("valid kafka_brokers")
    }

    #[test]
    fn kafka_brokers_entries_must_be_host_port() {
        brokers(&[
            "kafka:9092",
            " Kafka-2.internal:9093 ",
            "10.0.0.7:1",
            "[::1]:9092",
        ]);
        for (entry, reason) in [
            ("kafka", "no port: give host:port, such as kafka:9092"),
            ("kafka:", "port '' is not a number from 1 to 65535"),
            ("kafka:x", "port 'x' is not a number from 1 to 65535"),
            ("kafka:0", "port '0' is not a number from 1 to 65535"),
            (
                "kafka:65536",
                "port '65536' is not a number from 1 to 65535",
            ),
            (":9092", "'' is not a host name or address"),
            (
                "PLAINTEXT://kafka:9092",
                "'PLAINTEXT://kafka' is not a host name or address",
            ),
            ("a b:9092", "'a b' is not a host name or address"),
            (
                "::1:9092",
                "an IPv6 address goes in brackets, such as [::1]:9092",
            ),
        ] {
            let error = Brokers::parse(&["k:9092".into(), entry.into()])
                .expect_err(entry)
                .to_string();
            assert_eq!(error, format!("invalid kafka_brokers '{entry}': {reason}"));
        }
    }

    #[test]
    fn a_trigger_is_consumed_only_when_every_server_is_allowed() {
        let servers = |servers: &[&str]| KafkaTrigger {
            bootstrap_servers: servers.iter().map(|s| s.to_string()).collect(),
            ..trigger("t")
        };
        let allowed = brokers(&["Kafka:9092", "k2:9093"]);
        assert_eq!(
            allowed.admit(servers(&[" KAFKA:9092", "k2:9093 "])),
            Ok(servers(&["kafka:9092", "k2:9093"])),
            "checked as host:port, the host in any case; connected to as checked"
        );
        for (named, refused) in [
            (&["kafka:9092", "10.0.0.1:22"][..], &["10.0.0.1:22"][..]),
            (&["kafka:9093"][..], &["kafka:9093"][..]),
            (&["kafka"][..], &["kafka"][..]),
            (
                &["kafka:9092,10.0.0.1:22"][..],
                &["kafka:9092,10.0.0.1:22"][..],
            ),
            (
                &["kafka:9092 10.0.0.1:22"][..],
                &["kafka:9092 10.0.0.1:22"][..],
            ),
        ] {
            assert_eq!(
                allowed.admit(servers(named)),
                Err(refused.iter().map(|s| s.to_string()).collect()),
                "{named:?}"
            );
        }
        let nothing = brokers(&[]);
        assert_eq!(
            nothing.admit(servers(&["kafka:9092"])),
            Err(vec!["kafka:9092".to_string()]),
            "an empty kafka_brokers consumes no trigger"
        );
    }

    #[test]
    fn refused_triggers_are_counted_once_per_version_and_allowed_ones_still_run() {
        let metrics = Metrics::new();
        let brokers = brokers(&["k:9092"]);
        let mut reported = BTreeMap::new();
        let probe = |version| FunctionInfo {
            version,
            ..info(
                "probe",
                vec![
                    trigger("a"),
                    KafkaTrigger {
                        bootstrap_servers: vec!["127.0.0.1:6379".into()],
                        ..trigger("b")
                    },
                ],
            )
        };
        for version in [1, 1, 2, 2] {
            let wanted = admit(vec![probe(version)], &brokers, &mut reported, &metrics);
            assert_eq!(
                wanted,
                BTreeMap::from([("probe".to_string(), vec![trigger("a")])])
            );
        }
        let text = metrics.render(0, 0, 0);
        assert!(
            text.contains(
                r#"sock_gateway_kafka_triggers_total{function="probe",outcome="refused"} 2"#
            ),
            "{text}"
        );
        // Deleted: forgotten, so a function of that name is reported anew.
        admit(Vec::new(), &brokers, &mut reported, &metrics);
        assert!(reported.is_empty(), "{reported:?}");
    }

    #[test]
    fn a_message_is_a_post_with_openlambdas_headers() {
        let request = request("echo", "lambda-echo", "orders", 2, 41);
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("POST", "/")
        );
        assert_eq!(request.root_path, "/run/echo");
        let headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(
            headers,
            [
                ("content-type", "application/json"),
                ("x-kafka-topic", "orders"),
                ("x-kafka-partition", "2"),
                ("x-kafka-offset", "41"),
                ("x-kafka-group-id", "lambda-echo"),
            ]
        );
    }

    fn http(status: u32, headers: &[(&str, &str)]) -> Result<Answer, Error> {
        Ok(Answer {
            outcome: Outcome::Http(HttpResponse {
                status,
                headers: headers
                    .iter()
                    .map(|(name, value)| HttpHeader {
                        name: name.to_string(),
                        value: value.to_string(),
                    })
                    .collect(),
                body: Vec::new(),
            }),
            version: 1,
        })
    }

    #[test]
    fn an_app_seeks_with_a_valid_offset_only() {
        assert_eq!(
            Verdict::of(&http(200, &[("X-Kafka-Seek-Offset", "7")])),
            Verdict::Ok { seek: Some(7) }
        );
        assert_eq!(
            Verdict::of(&http(200, &[("x-kafka-seek-offset", " 0 ")])),
            Verdict::Ok { seek: Some(0) }
        );
        for bad in ["-1", "soon", ""] {
            assert_eq!(
                Verdict::of(&http(200, &[("X-Kafka-Seek-Offset", bad)])),
                Verdict::Ok { seek: None },
                "{bad:?}"
            );
        }
    }

    #[test]
    fn overload_and_outages_are_tried_again_and_failures_passed_over() {
        assert_eq!(Verdict::of(&http(204, &[])), Verdict::Ok { seek: None });
        assert_eq!(Verdict::of(&http(503, &[])), Verdict::FunctionError);
        let raised = Ok(Answer {
            outcome: Outcome::Error(FunctionError::default()),
            version: 1,
        });
        assert_eq!(Verdict::of(&raised), Verdict::FunctionError);
        let failed_install = Error::from_sandboxd(
            ErrorKind::CannotStart
                .status("function 'f' cannot start: package 'nope==1.0' failed to install"),
        );
        assert_eq!(Verdict::of(&Err(failed_install)), Verdict::FunctionError);
        for retried in [
            Error::Overloaded("queue full".into()),
            Error::RegistryUnavailable("down".into()),
            Error::NotFound("echo".into()),
        ] {
            assert_eq!(Verdict::of(&Err(retried)), Verdict::Retry);
        }
        let too_large = Error::PayloadTooLarge { size: 2, limit: 1 };
        assert_eq!(Verdict::of(&Err(too_large)), Verdict::Refused);
    }
}
