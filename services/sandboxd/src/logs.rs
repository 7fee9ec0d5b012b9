//! What functions print: each line of a sandbox's stdout and stderr becomes
//! a tracing event (target "function") naming the function and sandbox.
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};

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
        let mut lines = LineSplitter::default();
        let mut reader = reader;
        let mut chunk = vec![0; 4096];
        loop {
            let n = match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for line in lines.push(&chunk[..n]) {
                emit(&origin, &line);
            }
        }
        if let Some(rest) = lines.finish() {
            emit(&origin, &rest);
        }
    })
}

fn emit(origin: &Origin, line: &str) {
    tracing::info!(
        target: "function",
        function = %origin.function,
        sandbox = %origin.sandbox,
        stream = origin.stream,
        "{line}"
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

    #[test]
    fn invalid_utf8_is_logged_lossily() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\xffb\n"), ["a\u{fffd}b"]);
    }
}
