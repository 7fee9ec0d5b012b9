//! What functions print and return, bounded: floods of output, endless
//! lines, forged call markers and oversized results, performed by real
//! functions in real sandboxes through sandboxd's gRPC API and metrics.
//! Needs root.
mod common;
#[path = "common/logs.rs"]
mod logs;
#[path = "common/node.rs"]
mod node;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use node::{Node, request};
use sock_proto::v1::sandbox_invoke_response::Outcome;
use sock_proto::v1::{ErrorKind, FunctionError, LogLine};
use sock_sandboxd::Config;
use sock_testkit::fake_cache::Function;

const MIB: usize = 1 << 20;

/// sandboxd in this process, serving metrics, its config changed by `tune`.
async fn start(test: &str, tune: impl FnOnce(&mut Config)) -> Option<Node> {
    node::start(test, |config| {
        // A port nothing else took a moment ago: sandboxd does not say which
        // one it bound.
        config.metrics_listen = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .to_string();
        tune(config);
    })
    .await
}

impl Node {
    /// Publishes `f_py` as version 1 of `name`.
    fn publish_v1(&self, name: &str, f_py: &str) {
        self.publish(name, 1, f_py, Function::default());
    }

    async fn invoke(&self, name: &str, call_id: &str, payload: &str) -> Outcome {
        self.client
            .clone()
            .invoke(request(name, 1, call_id, payload, 30_000))
            .await
            .expect("invoke")
            .into_inner()
            .outcome
            .expect("an outcome")
    }

    /// The value of the metric line starting with `series`.
    fn metric(&self, series: &str) -> u64 {
        let mut conn =
            std::net::TcpStream::connect(&self.config.metrics_listen).expect("connect to metrics");
        write!(conn, "GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n").expect("ask metrics");
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("read metrics");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    }

    async fn warm_starts(&self) -> u64 {
        self.status().await.warm_starts_total
    }
}

fn returned(outcome: &Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Result(body) => serde_json::from_slice(body).expect("result is JSON"),
        other => panic!("expected a result, got {other:?}"),
    }
}

fn failed(outcome: &Outcome) -> &FunctionError {
    match outcome {
        Outcome::Error(error) => error,
        other => panic!("expected a function error, got {other:?}"),
    }
}

/// The lines of `call`, and the ones sandboxd added about it.
fn of_call<'a>(lines: &'a [LogLine], call: &str) -> (Vec<&'a LogLine>, Vec<&'a LogLine>) {
    lines
        .iter()
        .filter(|line| line.call_id == call)
        .partition(|line| line.stream != "sandboxd")
}

/// The bytes a notice says were dropped.
fn dropped(notice: &LogLine) -> usize {
    let words: Vec<&str> = notice.line.split(' ').collect();
    assert_eq!(words[..2], ["sock:", "dropped"], "{}", notice.line);
    words[2].parse().expect("a byte count")
}

/// Bytes the function printed that were logged (a newline per line).
fn printed(lines: &[&LogLine]) -> usize {
    lines.iter().map(|line| line.line.len() + 1).sum()
}

const FLOOD: &str = r#"
import sys

def f(event):
    if event == "flood":
        line = "x" * 1023 + "\n"
        for _ in range(10 * 1024):
            sys.stdout.write(line)
        return "flooded"
    if event == "endless":
        sys.stdout.write("y" * (10 << 20))
        return "endless"
    print("after", event)
    return event
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_output_is_read_and_dropped_and_the_calls_go_on() {
    let Some(node) = start("flood", |_| {}).await else {
        return;
    };
    node.publish_v1("flood", FLOOD);
    let started = Instant::now();
    let outcome = node.invoke("flood", "flood-1", r#""flood""#).await;
    let took = started.elapsed();
    assert_eq!(returned(&outcome), "flooded");
    eprintln!("a 10 MiB flood took {took:?} (cold start included)");

    let lines = node.logs("flood").await;
    let (kept, notices) = of_call(&lines, "flood-1");
    // The ring keeps less than a call may log: its bytes count each
    // line's overhead too.
    assert!(printed(&kept) <= MIB, "{} bytes logged", printed(&kept));
    // Whole lines, but the last: cut where dropping began.
    assert!(
        kept.iter()
            .rev()
            .skip(1)
            .all(|line| line.line == "x".repeat(1023))
    );
    assert_eq!(notices.len(), 1, "one notice: {notices:?}");
    // More than 9 MiB: each line also costs the budget its keeping.
    let dropped = dropped(notices[0]);
    assert!((9 * MIB..10 * MIB).contains(&dropped), "{dropped}");
    assert_eq!(
        notices[0].line,
        format!(
            "sock: dropped {dropped} bytes of this call's output \
             ({dropped} over the limit of 1048576 bytes per call)"
        )
    );
    assert_eq!(
        node.metric(r#"sock_sandboxd_output_dropped_bytes_total{reason="call_limit"}"#),
        dropped as u64
    );

    let outcome = node.invoke("flood", "flood-2", r#""calm""#).await;
    assert_eq!(returned(&outcome), "calm");
    assert_eq!(node.warm_starts().await, 1, "the flooded sandbox served it");
    let lines = node.logs("flood").await;
    let (kept, notices) = of_call(&lines, "flood-2");
    let kept: Vec<&str> = kept.iter().map(|line| line.line.as_str()).collect();
    assert_eq!(kept, ["after calm"]);
    assert!(notices.is_empty(), "{notices:?}");

    let started = Instant::now();
    let outcome = node.invoke("flood", "flood-3", r#""flood""#).await;
    let took = started.elapsed();
    assert_eq!(returned(&outcome), "flooded");
    eprintln!("a 10 MiB flood in a warm sandbox took {took:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_empty_lines_is_bounded_like_text() {
    let Some(node) = start("newlines", |_| {}).await else {
        return;
    };
    node.publish_v1(
        "newlines",
        "import sys\n\ndef f(event):\n    sys.stdout.write('\\n' * (10 << 20))\n    return 1\n",
    );
    for call in ["newlines-1", "newlines-2"] {
        let started = Instant::now();
        assert_eq!(returned(&node.invoke("newlines", call, "").await), 1);
        eprintln!("10 MiB of newlines took {:?} ({call})", started.elapsed());
        // Read before the next call: 8,129 empty lines fill the function's
        // 1 MiB ring, and the next call's lines push out the oldest, its
        // notice among them once the rate limit has earned them enough.
        let lines = node.logs("newlines").await;
        let (_, notices) = of_call(&lines, call);
        assert_eq!(notices.len(), 1, "{call}: {notices:?}");
        if call == "newlines-1" {
            // A line costs 128 bytes besides its newline: 1 MiB / 129
            // lines, and the one that found the allowance not quite spent.
            assert_eq!(
                dropped(notices[0]),
                (10 * MIB) - 8129,
                "{}",
                notices[0].line
            );
        }
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mib_line_without_a_newline_is_logged_in_bounded_pieces() {
    let Some(node) = start("endless", |_| {}).await else {
        return;
    };
    node.publish_v1("endless", FLOOD);
    let outcome = node.invoke("endless", "endless-1", r#""endless""#).await;
    assert_eq!(returned(&outcome), "endless");
    let lines = node.logs("endless").await;
    let (kept, notices) = of_call(&lines, "endless-1");
    let bytes: usize = kept.iter().map(|line| line.line.len()).sum();
    assert!(bytes <= MIB, "{bytes} bytes logged");
    assert!(kept.iter().all(|line| line.line.len() <= 8 << 10));
    assert!(kept.iter().all(|line| line.line.bytes().all(|b| b == b'y')));
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!((9 * MIB..10 * MIB).contains(&dropped(notices[0])));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_over_the_rate_is_dropped_across_calls() {
    let Some(node) = start("rate", |config| {
        config.max_output_bytes_per_call = 512 << 10;
        config.output_bytes_per_s = 16 << 10;
    })
    .await
    else {
        return;
    };
    node.publish_v1(
        "chatty",
        "import sys\n\ndef f(event):\n    sys.stdout.write(('z' * 1023 + '\\n') * event)\n    \
         return event\n",
    );
    // 400 lines fit in one call's allowance, and leave the bucket less
    // than 64 KiB for the next call (a second of refill is 16 KiB).
    assert_eq!(returned(&node.invoke("chatty", "rate-1", "400").await), 400);
    assert_eq!(returned(&node.invoke("chatty", "rate-2", "400").await), 400);
    let lines = node.logs("chatty").await;
    let (first, notices) = of_call(&lines, "rate-1");
    assert_eq!(first.len(), 400);
    assert!(notices.is_empty(), "{notices:?}");
    let (second, notices) = of_call(&lines, "rate-2");
    assert!(second.len() < 100, "{} lines logged", second.len());
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(
        notices[0]
            .line
            .ends_with("over the rate limit of 16384 bytes/s)"),
        "{}",
        notices[0].line
    );
    // Lines cut where dropping began count a newline they did not have.
    let over_rate =
        node.metric(r#"sock_sandboxd_output_dropped_bytes_total{reason="rate_limit"}"#) as usize;
    assert_eq!(over_rate, dropped(notices[0]));
    let read = over_rate + printed(&second);
    assert!(
        (400 << 10..=(400 << 10) + second.len()).contains(&read),
        "{over_rate} dropped + {} logged",
        printed(&second)
    );
    node.stop().await;
}

/// Prints the call marker the runtime used to write, naming `event`'s
/// victim call, then lines that would have gone to it.
const FORGER: &str = r#"
import sys

def f(event):
    for stream in (sys.stdout, sys.stderr):
        stream.write("\x1esock-call:" + event + "\n")
        stream.write("forged for " + event + "\n")
    return event
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_printed_call_marker_is_just_text_in_the_printing_calls_log() {
    let Some(node) = start("forge", |_| {}).await else {
        return;
    };
    node.publish_v1(
        "victim",
        "def f(event):\n    print('honest')\n    return 1\n",
    );
    node.publish_v1("forger", FORGER);
    assert_eq!(returned(&node.invoke("victim", "victim-1", "").await), 1);
    // Another function's call, and this function's own next call.
    for victim in ["victim-1", "forger-2"] {
        let payload = format!("\"{victim}\"");
        assert_eq!(
            returned(&node.invoke("forger", "forger-1", &payload).await),
            victim
        );
    }
    assert_eq!(
        returned(&node.invoke("forger", "forger-2", r#""x""#).await),
        "x"
    );

    let victim = node.logs("victim").await;
    let victim: Vec<(&str, &str)> = victim
        .iter()
        .map(|l| (l.call_id.as_str(), l.line.as_str()))
        .collect();
    assert_eq!(victim, [("victim-1", "honest")]);
    let forger = node.logs("forger").await;
    let (first, _) = of_call(&forger, "forger-1");
    assert_eq!(first.len(), 8, "{forger:?}");
    assert!(first.iter().any(|l| l.line == "\u{1e}sock-call:victim-1"));
    assert!(first.iter().any(|l| l.line == "forged for forger-2"));
    let (second, _) = of_call(&forger, "forger-2");
    // Two pipes: order holds within each, not between them.
    for stream in ["stdout", "stderr"] {
        let lines: Vec<&str> = second
            .iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.line.as_str())
            .collect();
        assert_eq!(lines, ["\u{1e}sock-call:x", "forged for x"], "{stream}");
    }
    node.stop().await;
}

/// Prints `lines` numbered lines per stream, then starts a thread that
/// prints after the call has returned.
const NUMBERED: &str = r#"
import sys, threading, time

def late(n):
    time.sleep(0.05)
    print("late", n, flush=True)

def f(event):
    n, lines, stray = event["n"], event["lines"], event["stray"]
    for i in range(lines):
        print("call", n, i)
        print("call", n, i, file=sys.stderr)
    if stray:
        threading.Thread(target=late, args=(n,)).start()
    return n
"#;

async fn every_line_goes_to_the_call_that_printed_it(
    test: &str,
    import_cache: sock_service::ImportCache,
) {
    let Some(node) = start(test, |config| config.import_cache = import_cache).await else {
        return;
    };
    node.publish_v1("numbered", NUMBERED);
    let calls = 10;
    for n in 0..calls {
        let payload = format!(r#"{{"n": {n}, "lines": 40, "stray": false}}"#);
        let outcome = node
            .invoke("numbered", &format!("call-{n}"), &payload)
            .await;
        assert_eq!(returned(&outcome), n);
    }
    let lines = node.logs("numbered").await;
    assert_eq!(lines.len(), calls * 80);
    for line in &lines {
        let n = line.line.split(' ').nth(1).expect("numbered");
        assert_eq!(line.call_id, format!("call-{n}"), "{line:?}");
    }

    // A thread still printing after its call answered.
    let payload = r#"{"n": 99, "lines": 0, "stray": true}"#;
    assert_eq!(
        returned(&node.invoke("numbered", "stray-call", payload).await),
        99
    );
    let mut late = None;
    for _ in 0..500 {
        late = node
            .logs("numbered")
            .await
            .into_iter()
            .find(|line| line.line == "late 99");
        if late.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let late = late.expect("the stray thread's line is logged");
    assert_eq!(late.call_id, "", "printed between calls: no call's");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_goes_to_the_call_that_printed_it_in_a_forked_sandbox() {
    every_line_goes_to_the_call_that_printed_it("lines-tree", sock_service::ImportCache::Tree)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_goes_to_the_call_that_printed_it_in_a_fresh_sandbox() {
    every_line_goes_to_the_call_that_printed_it("lines-off", sock_service::ImportCache::Off).await;
}

/// Returns `event` bytes of JSON; with a negative size, writes its own
/// reply frame claiming that many bytes, past the runtime's check.
const BIG: &str = r#"
import json, os, struct

def f(event):
    if event < 0:
        header = json.dumps({"type": "result"}).encode()
        os.write(3, struct.pack(">I", len(header)) + header + struct.pack(">I", -event))
        os._exit(0)
    return "z" * (event - 2)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_limit_is_a_clear_error_and_the_node_goes_on() {
    let Some(node) = start("result", |config| config.max_result_bytes = MIB as u32).await else {
        return;
    };
    node.publish_v1("big", BIG);
    let fits = node.invoke("big", "fits", &MIB.to_string()).await;
    assert_eq!(returned(&fits).as_str().map(str::len), Some(MIB - 2));

    let over = node.invoke("big", "over", &(MIB + 1).to_string()).await;
    let error = failed(&over);
    assert_eq!(error.kind, ErrorKind::Function as i32);
    assert_eq!(
        error.message,
        format!(
            "result of f(event) is {} bytes, over the limit of {MIB} bytes",
            MIB + 1
        )
    );
    let again = node.invoke("big", "again", "10").await;
    assert_eq!(returned(&again), "z".repeat(8));
    assert_eq!(node.warm_starts().await, 2, "the same sandbox answered");

    // A function that writes its own oversized reply frame.
    let forged = node
        .invoke("big", "forged", &format!("-{}", 32 * MIB))
        .await;
    let error = failed(&forged);
    assert_eq!(error.kind, ErrorKind::Function as i32);
    assert_eq!(
        error.message,
        format!(
            "the function's reply is {} bytes, over the limit of {MIB} bytes; \
             its sandbox was destroyed",
            32 * MIB
        )
    );
    let after = node.invoke("big", "after", "10").await;
    assert_eq!(returned(&after), "z".repeat(8));
    node.stop().await;
}
