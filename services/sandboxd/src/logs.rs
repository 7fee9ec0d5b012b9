//! What functions print: each line of a sandbox's stdout and stderr becomes
//! a tracing event (target "function") naming the function and sandbox,
//! and goes into a bounded ring per function that `Logs` serves.
//!
//! Lines are tagged with the call that printed them: before each call the
//! runtime writes a marker line (`CALL_MARKER` + call id) to both streams,
//! so attribution follows the stream's own order.
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use sock_proto::v1::LogLine;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::broadcast;

/// Must match CALL_MARKER in runtime/sock_runtime.py.
const CALL_MARKER: &str = "\u{1e}sock-call:";
/// Lines kept per function.
const RING_LINES: usize = 1000;
/// Lines a follower may fall behind before it misses some.
const FOLLOW_BUFFER: usize = 1024;

/// The node's log rings. One per process: a node is one sandboxd.
pub(crate) struct LogRing {
    functions: Mutex<HashMap<Arc<str>, VecDeque<LogLine>>>,
    live: broadcast::Sender<LogLine>,
}

pub(crate) fn ring() -> &'static LogRing {
    static RING: OnceLock<LogRing> = OnceLock::new();
    RING.get_or_init(|| LogRing {
        functions: Mutex::default(),
        live: broadcast::channel(FOLLOW_BUFFER).0,
    })
}

impl LogRing {
    fn push(&self, function: &Arc<str>, line: LogLine) {
        {
            let mut functions = self.functions.lock().unwrap_or_else(|p| p.into_inner());
            let ring = functions.entry(function.clone()).or_default();
            if ring.len() == RING_LINES {
                ring.pop_front();
            }
            ring.push_back(line.clone());
        }
        // Nobody following is fine.
        let _ = self.live.send(line);
    }

    /// The kept lines of `function`, oldest first, and (taken at the same
    /// moment, so nothing is lost or doubled) the lines that come later.
    pub fn read(&self, function: &str) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let functions = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        let live = self.live.subscribe();
        let kept = functions
            .get(function)
            .map(|ring| ring.iter().cloned().collect())
            .unwrap_or_default();
        (kept, live)
    }
}

/// What `Logs` streams.
pub(crate) type LogStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<LogLine, tonic::Status>> + Send>>;

/// The kept lines of `function`, then with `follow` its new lines until
/// the client goes away.
pub(crate) fn stream(function: &str, follow: bool) -> LogStream {
    let (kept, live) = ring().read(function);
    let kept = futures::stream::iter(kept.into_iter().map(Ok));
    if !follow {
        return Box::pin(kept);
    }
    let function = function.to_string();
    let live = futures::stream::unfold(live, move |mut live| {
        let function = function.clone();
        async move {
            loop {
                match live.recv().await {
                    Ok(line) if line.function == function => return Some((Ok(line), live)),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "log follower fell behind");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Box::pin(futures::StreamExt::chain(kept, live))
}

/// A line longer than this is logged in pieces, so a function printing
/// without newlines cannot make sandboxd buffer without bound.
const MAX_LINE: usize = 8 << 10;

/// Who printed.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    pub function: Arc<str>,
    pub sandbox: Arc<str>,
    pub stream: &'static str,
}

/// Logs `reader` line by line until it closes. Draining never stops early:
/// a full pipe would block the function.
pub(crate) fn forward<R>(reader: R, origin: Origin) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut call_id = String::new();
        let mut lines = LineSplitter::default();
        let mut reader = reader;
        let mut chunk = vec![0; 4096];
        loop {
            let n = match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for line in lines.push(&chunk[..n]) {
                emit(&origin, &mut call_id, line);
            }
        }
        if let Some(rest) = lines.finish() {
            emit(&origin, &mut call_id, rest);
        }
    })
}

fn emit(origin: &Origin, call_id: &mut String, line: String) {
    if let Some(id) = line.strip_prefix(CALL_MARKER) {
        *call_id = id.to_string();
        return;
    }
    tracing::info!(
        target: "function",
        function = %origin.function,
        sandbox = %origin.sandbox,
        call_id = %call_id,
        stream = origin.stream,
        "{line}"
    );
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    ring().push(
        &origin.function,
        LogLine {
            function: origin.function.to_string(),
            call_id: call_id.clone(),
            stream: origin.stream.to_string(),
            line,
            unix_ms,
            node: String::new(),
        },
    );
}

/// Splits a byte stream into lines of at most MAX_LINE bytes.
#[derive(Default)]
struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut lines = Vec::new();
        loop {
            if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                lines.push(text(&line[..line.len() - 1]));
            } else if self.pending.len() >= MAX_LINE {
                let piece: Vec<u8> = self.pending.drain(..MAX_LINE).collect();
                lines.push(text(&piece));
            } else {
                return lines;
            }
        }
    }

    fn finish(self) -> Option<String> {
        (!self.pending.is_empty()).then(|| text(&self.pending))
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches('\r')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_chunks() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"hel"), Vec::<String>::new());
        assert_eq!(s.push(b"lo\nwor"), ["hello"]);
        assert_eq!(s.push(b"ld\r\n\n"), ["world", ""]);
        assert_eq!(s.push(b"tail"), Vec::<String>::new());
        assert_eq!(s.finish().as_deref(), Some("tail"));
    }

    #[test]
    fn endless_lines_are_cut_not_buffered() {
        let mut s = LineSplitter::default();
        let lines = s.push(&vec![b'x'; MAX_LINE * 2 + 3]);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.len() == MAX_LINE));
        assert_eq!(s.finish().as_deref(), Some("xxx"));
    }

    #[tokio::test]
    async fn lines_are_kept_per_function_and_tagged_with_their_call() {
        let origin = Origin {
            function: "logs-test-fn".into(),
            sandbox: "s1".into(),
            stream: "stdout",
        };
        let output = format!("{CALL_MARKER}c1\nhello\n{CALL_MARKER}c2\nworld\n");
        forward(std::io::Cursor::new(output.into_bytes()), origin)
            .await
            .expect("forward");
        let (kept, _) = ring().read("logs-test-fn");
        let got: Vec<(&str, &str)> = kept
            .iter()
            .map(|l| (l.call_id.as_str(), l.line.as_str()))
            .collect();
        assert_eq!(got, [("c1", "hello"), ("c2", "world")]);
        assert!(ring().read("another-fn").0.is_empty());
    }

    #[test]
    fn the_ring_keeps_the_latest_lines() {
        let function: Arc<str> = "logs-ring-fn".into();
        for i in 0..RING_LINES + 5 {
            ring().push(
                &function,
                LogLine {
                    line: i.to_string(),
                    ..LogLine::default()
                },
            );
        }
        let (kept, _) = ring().read("logs-ring-fn");
        assert_eq!(kept.len(), RING_LINES);
        assert_eq!(kept[0].line, "5");
    }

    #[test]
    fn invalid_utf8_is_logged_lossily() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\xffb\n"), ["a\u{fffd}b"]);
    }
}
