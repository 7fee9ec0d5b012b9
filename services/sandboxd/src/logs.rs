//! What functions print: each line of a sandbox's stdout and stderr becomes
//! a tracing event (target "function") naming the function and sandbox,
//! and goes into a bounded ring per function that `Logs` serves.
//!
//! Lines are tagged with their call out of band: the code that sends a
//! sandbox its calls tells the sandbox's forwarder (one task owning both
//! pipes) where each call begins and ends ([`Calls`]), so whatever a
//! function prints is text in its own log, never a claim on another call.
//! What a sandbox prints is bounded per call and over time; the excess is
//! read and dropped, and the call's log says how much.
//!
//! Nothing on stdout or stderr is protocol. The code that sends a call
//! tells the forwarder where the call begins (after `ready`) and ends (once
//! the reply is read). The runtime flushes stdout and stderr before `ready`
//! and before each reply, and at each switch the forwarder first reads
//! exactly what the pipes hold (FIONREAD), so every line goes to the call
//! that printed it. Lines printed between calls (a stray thread) get no call
//! id, not the next call's, which its caller did not cause; after a failed
//! reply (timeout, crash) the rest, until the pipes close, stays with the
//! call.
//!
//! Bounds: `max_output_bytes_per_call` (1 MiB) per call, and a token bucket
//! per sandbox of `output_bytes_per_s` (256 KiB/s) whose burst is one call's
//! allowance; each line counts 128 bytes besides its text, so a flood of
//! empty lines costs no more than text. The excess is read and dropped (a
//! flooding function never blocks on a full pipe, and sandboxd never
//! buffers it), counted in `sock_sandboxd_output_dropped_bytes_total{reason=
//! "call_limit"|"rate_limit"}`, and the call's log gets one line, stream
//! `sandboxd`: `sock: dropped N bytes of this call's output (…)`. Lines over
//! 8 KiB are logged in pieces.
//!
//! `Sandboxd/Logs` serves the ring of a function: at most 1000 lines and
//! `log_ring_bytes` (1 MiB), for at most `log_ring_functions` (64)
//! functions; a new function's ring replaces the one written longest ago, so
//! a function just called keeps its lines and the node keeps at most
//! `log_ring_bytes` × `log_ring_functions` of them.
use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind::WouldBlock;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Poll;
use std::time::Instant;

use sock_proto::v1::LogLine;
use tokio::net::unix::pipe::Receiver;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::Config;

/// Lines kept per function.
const RING_LINES: usize = 1000;
/// Lines a follower may fall behind before it misses some.
const FOLLOW_BUFFER: usize = 1024;
/// A line longer than this is logged in pieces, so a function printing
/// without newlines cannot make sandboxd buffer without bound.
const MAX_LINE: usize = 8 << 10;
/// One read from a pipe: its default capacity, so a flood is read (and
/// dropped) in few syscalls.
const READ_CHUNK: usize = 64 << 10;
/// What a line costs against the output budget besides its bytes: about
/// what sandboxd spends on each (a `LogLine`, a tracing event), so a flood
/// of empty lines is bounded like a flood of text.
const LINE_COST: u64 = 128;
/// The stream of the lines sandboxd itself adds to a call's log.
const NOTICE_STREAM: &str = "sandboxd";

/// What sandboxd lets functions print and keeps of it (see `Config`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Limits {
    pub call_bytes: u64,
    pub bytes_per_s: u64,
    pub ring_bytes: usize,
    pub ring_functions: usize,
}

impl Limits {
    fn of(config: &Config) -> Limits {
        Limits {
            call_bytes: config.max_output_bytes_per_call,
            bytes_per_s: config.output_bytes_per_s,
            ring_bytes: usize::try_from(config.log_ring_bytes).unwrap_or(usize::MAX),
            ring_functions: config.log_ring_functions,
        }
    }
}

/// The node's log rings, limits and drop counts. One per process: a node
/// is one sandboxd.
pub(crate) struct LogRing {
    rings: Mutex<Rings>,
    live: broadcast::Sender<LogLine>,
    /// Bytes dropped for being over the per-call limit, and over the rate.
    dropped_over_call: AtomicU64,
    dropped_over_rate: AtomicU64,
    /// The forwarders of sandboxes not yet handed to their [`Sandbox`]
    /// (see [`take_calls`]).
    ///
    /// [`Sandbox`]: crate::sandbox::Sandbox
    calls: Mutex<HashMap<Arc<str>, Calls>>,
}

pub(crate) fn ring() -> &'static LogRing {
    static RING: OnceLock<LogRing> = OnceLock::new();
    RING.get_or_init(|| LogRing {
        rings: Mutex::new(Rings::new(Limits::of(&Config::default()))),
        live: broadcast::channel(FOLLOW_BUFFER).0,
        dropped_over_call: AtomicU64::new(0),
        dropped_over_rate: AtomicU64::new(0),
        calls: Mutex::default(),
    })
}

/// A panic while holding one of these locks leaves the map consistent
/// (single inserts and removes), so poisoning is safe to ignore.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies `config`'s output limits to the node's logs; sandboxes started
/// from now on get them.
pub(crate) fn configure(config: &Config) {
    lock(&ring().rings).limits = Limits::of(config);
}

impl LogRing {
    fn limits(&self) -> Limits {
        lock(&self.rings).limits
    }

    fn push(&self, line: LogLine) {
        lock(&self.rings).push(line.clone());
        // Nobody following is fine.
        let _ = self.live.send(line);
    }

    /// The kept lines of `function`, oldest first, and (taken at the same
    /// moment, so nothing is lost or doubled) the lines that come later.
    pub fn read(&self, function: &str) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let rings = lock(&self.rings);
        let live = self.live.subscribe();
        (rings.read(function), live)
    }

    /// Output bytes dropped so far: (over the per-call limit, over the rate).
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.dropped_over_call.load(Ordering::Relaxed),
            self.dropped_over_rate.load(Ordering::Relaxed),
        )
    }
}

/// The kept lines of every function, bounded in lines and bytes per
/// function and in functions.
struct Rings {
    limits: Limits,
    functions: HashMap<Arc<str>, Ring>,
    /// Counts pushes: a ring's last one orders it for eviction.
    pushes: u64,
}

#[derive(Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
    last_push: u64,
}

impl Rings {
    fn new(limits: Limits) -> Rings {
        Rings {
            limits,
            functions: HashMap::new(),
            pushes: 0,
        }
    }

    fn push(&mut self, line: LogLine) {
        self.pushes += 1;
        let function: &str = &line.function;
        if !self.functions.contains_key(function)
            && self.functions.len() >= self.limits.ring_functions.max(1)
        {
            // The function written longest ago: its lines are the least
            // likely to be asked for next.
            let oldest = self
                .functions
                .iter()
                .min_by_key(|(_, ring)| ring.last_push)
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                self.functions.remove(&oldest);
            }
        }
        let ring = self.functions.entry(function.into()).or_default();
        ring.last_push = self.pushes;
        let size = size(&line);
        while ring.lines.len() >= RING_LINES
            || (!ring.lines.is_empty() && ring.bytes + size > self.limits.ring_bytes)
        {
            let Some(old) = ring.lines.pop_front() else {
                break;
            };
            ring.bytes -= self::size(&old);
        }
        ring.bytes += size;
        ring.lines.push_back(line);
    }

    fn read(&self, function: &str) -> Vec<LogLine> {
        self.functions
            .get(function)
            .map(|ring| ring.lines.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The memory a kept line takes, near enough.
fn size(line: &LogLine) -> usize {
    std::mem::size_of::<LogLine>()
        + line.function.len()
        + line.call_id.len()
        + line.stream.len()
        + line.line.len()
        + line.node.len()
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

/// Who printed.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    pub function: Arc<str>,
    pub sandbox: Arc<str>,
}

/// Tells a sandbox's forwarder where its calls begin and end. Each switch
/// returns once the forwarder has read everything that was in the pipes
/// when it was asked, and tagged it with the call that is ending.
pub(crate) struct Calls(mpsc::UnboundedSender<Switch>);

struct Switch {
    call_id: Option<Arc<str>>,
    done: oneshot::Sender<()>,
}

impl Calls {
    /// Lines printed from now on belong to `call_id`.
    pub async fn begin(&self, call_id: &str) {
        self.switch(Some(call_id.into())).await;
    }

    /// The call has answered: the runtime flushed stdout and stderr before
    /// its reply, so all the call printed is in the pipes now. Later lines
    /// belong to no call.
    pub async fn end(&self) {
        self.switch(None).await;
    }

    async fn switch(&self, call_id: Option<Arc<str>>) {
        let (done, switched) = oneshot::channel();
        // A forwarder that is gone (its pipes closed) has nothing to tag.
        if self.0.send(Switch { call_id, done }).is_ok() {
            let _ = switched.await;
        }
    }
}

/// The [`Calls`] of the sandbox `id`, once: whoever starts a sandbox hands
/// its pipes to [`forward`], and the sandbox takes the handle when it is
/// made, so the code in between need not carry it.
pub(crate) fn take_calls(id: &str) -> Option<Calls> {
    lock(&ring().calls).remove(id)
}

/// Logs what the sandbox `id` prints, line by line, each line tagged
/// with the call it was serving (the [`Sandbox`](crate::sandbox::Sandbox)
/// made with `id` says).
pub(crate) fn forward_logs(
    function: &Arc<str>,
    id: &str,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
) {
    let origin = Origin {
        function: function.clone(),
        sandbox: id.into(),
    };
    forward(origin, stdout, stderr);
}

/// Logs a sandbox's stdout and stderr line by line until both close.
/// Reading never stops early: a full pipe would block the function.
pub(crate) fn forward(origin: Origin, stdout: Option<OwnedFd>, stderr: Option<OwnedFd>) {
    let mut pipes = Vec::new();
    for (fd, stream) in [(stdout, "stdout"), (stderr, "stderr")] {
        let Some(fd) = fd else { continue };
        match Pipe::new(fd, stream) {
            Ok(pipe) => pipes.push(pipe),
            Err(e) => tracing::error!(
                sandbox = %origin.sandbox, stream, error = %e, "cannot read the sandbox's output"
            ),
        }
    }
    let (calls, switches) = mpsc::unbounded_channel();
    lock(&ring().calls).insert(origin.sandbox.clone(), Calls(calls));
    let forwarder = Forwarder {
        budget: Budget::new(ring().limits()),
        origin,
        call_id: None,
    };
    tokio::spawn(forwarder.run(pipes, switches));
}

/// One of a sandbox's output pipes, non-blocking.
struct Pipe {
    rx: Receiver,
    stream: &'static str,
    lines: LineSplitter,
    open: bool,
}

impl Pipe {
    fn new(fd: OwnedFd, stream: &'static str) -> std::io::Result<Pipe> {
        Ok(Pipe {
            rx: Receiver::from_owned_fd(fd)?,
            stream,
            lines: LineSplitter::default(),
            open: true,
        })
    }

    /// Reads what the pipe holds, without waiting; 0 at its end. A plain
    /// read: tokio's would first ask its own idea of readiness, which lags
    /// behind the pipe.
    fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        Ok(nix::unistd::read(&self.rx, buf)?)
    }

    /// Bytes in the pipe right now.
    #[allow(unsafe_code)]
    fn unread(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int, into `n`, which outlives the
        // call; the fd is open while `self` lives.
        let done = unsafe { libc::ioctl(self.rx.as_raw_fd(), libc::FIONREAD, &mut n) };
        if done < 0 {
            0
        } else {
            usize::try_from(n).unwrap_or(0)
        }
    }
}

/// Reads one chunk from whichever pipe is readable first (starting after
/// `*next`, so one flooded stream cannot starve the other); (pipe, bytes
/// read or 0 at its end).
async fn read_any(pipes: &[Pipe], next: &mut usize, buf: &mut [u8]) -> (usize, usize) {
    std::future::poll_fn(|cx| {
        for k in 0..pipes.len() {
            let i = (*next + k) % pipes.len();
            let pipe = &pipes[i];
            if !pipe.open {
                continue;
            }
            loop {
                match pipe.rx.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready((i, 0)),
                    Poll::Pending => break,
                }
                match pipe.rx.try_read(buf) {
                    // Readiness is cleared: poll again to wait for more.
                    Err(e) if e.kind() == WouldBlock => {}
                    read => {
                        *next = i + 1;
                        return Poll::Ready((i, read.unwrap_or(0)));
                    }
                }
            }
        }
        Poll::Pending
    })
    .await
}

/// Tags and bounds one sandbox's output.
struct Forwarder {
    origin: Origin,
    /// The call being served; None between calls. Lines printed between
    /// calls (a thread the function left running) get no call id rather
    /// than the next call's: that call may never come, or come from a
    /// caller who did not cause them.
    call_id: Option<Arc<str>>,
    budget: Budget,
}

impl Forwarder {
    async fn run(mut self, mut pipes: Vec<Pipe>, mut switches: mpsc::UnboundedReceiver<Switch>) {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut next = 0;
        let mut served = true;
        while pipes.iter().any(|pipe| pipe.open) {
            tokio::select! {
                // A switch first: its caller waits, and the pipes are read
                // up to the switch either way.
                biased;
                switch = switches.recv(), if served => match switch {
                    Some(switch) => {
                        self.drain(&mut pipes, &mut buf);
                        self.end_segment(&mut pipes);
                        self.call_id = switch.call_id;
                        let _ = switch.done.send(());
                    }
                    // The sandbox is gone; its last call keeps what is left.
                    None => served = false,
                },
                (i, n) = read_any(&pipes, &mut next, &mut buf) => {
                    if n == 0 {
                        pipes[i].open = false;
                    } else {
                        self.take(&mut pipes[i], &buf[..n]);
                    }
                }
            }
        }
        self.end_segment(&mut pipes);
        lock(&ring().calls).remove(&self.origin.sandbox);
    }

    /// Reads exactly what the pipes hold now (more may be coming, from a
    /// thread still printing: that waits for the next read).
    fn drain(&mut self, pipes: &mut [Pipe], buf: &mut [u8]) {
        for pipe in pipes.iter_mut().filter(|pipe| pipe.open) {
            let mut left = pipe.unread();
            while left > 0 {
                let want = left.min(buf.len());
                match pipe.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        self.take(pipe, &buf[..n]);
                        left = left.saturating_sub(n);
                    }
                }
            }
        }
    }

    /// Logs what the budget admits of `bytes`, line by line, and drops
    /// the rest of them from the first line it does not admit whole.
    fn take(&mut self, pipe: &mut Pipe, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let end = bytes
                .iter()
                .position(|b| *b == b'\n')
                .map_or(bytes.len(), |i| i + 1);
            let kept = self.budget.admit(end);
            for line in pipe.lines.push(&bytes[..kept]) {
                self.emit(pipe.stream, line);
                self.budget.charge(LINE_COST);
            }
            if kept < end {
                self.budget.refuse(bytes.len() - end);
                // What is logged after the gap is not the rest of this line.
                if let Some(line) = pipe.lines.take() {
                    self.emit(pipe.stream, line);
                }
                return;
            }
            bytes = &bytes[end..];
        }
    }

    /// Ends the current call's (or between-calls) part of the output:
    /// unfinished lines are its last, then one line if any was dropped.
    fn end_segment(&mut self, pipes: &mut [Pipe]) {
        for pipe in pipes.iter_mut() {
            if let Some(line) = pipe.lines.take() {
                self.emit(pipe.stream, line);
            }
        }
        if let Some(notice) = self.budget.notice(self.call_id.is_some()) {
            self.emit(NOTICE_STREAM, notice);
        }
    }

    fn emit(&self, stream: &'static str, line: String) {
        let origin = &self.origin;
        let call_id = self.call_id.as_deref().unwrap_or_default();
        tracing::info!(
            target: "function",
            function = %origin.function,
            sandbox = %origin.sandbox,
            call_id,
            stream,
            "{line}"
        );
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        ring().push(LogLine {
            function: origin.function.to_string(),
            call_id: call_id.to_string(),
            stream: stream.to_string(),
            line,
            unix_ms,
            node: String::new(),
        });
    }
}

/// How much a sandbox may still log: `call_bytes` per call (or per stretch
/// between calls), and a token bucket of `bytes_per_s` whose burst is one
/// call's allowance.
struct Budget {
    limits: Limits,
    call_left: u64,
    tokens: f64,
    refilled: Instant,
    over_call: u64,
    over_rate: u64,
}

impl Budget {
    fn new(limits: Limits) -> Budget {
        Budget {
            limits,
            call_left: limits.call_bytes,
            tokens: limits.call_bytes as f64,
            refilled: Instant::now(),
            over_call: 0,
            over_rate: 0,
        }
    }

    /// How many of the next `n` bytes may be logged; the rest are counted
    /// as dropped.
    fn admit(&mut self, n: usize) -> usize {
        let now = Instant::now();
        let earned =
            now.duration_since(self.refilled).as_secs_f64() * self.limits.bytes_per_s as f64;
        self.tokens = (self.tokens + earned).min(self.limits.call_bytes as f64);
        self.refilled = now;
        let n = n as u64;
        let within_call = n.min(self.call_left);
        // Whole bytes only: a fraction of a token waits for the next read.
        let kept = within_call.min(self.tokens as u64);
        self.charge(kept);
        self.dropped(n - within_call, within_call - kept);
        usize::try_from(kept).expect("kept is at most n")
    }

    /// Takes `n` from what is left, as far as there is.
    fn charge(&mut self, n: u64) {
        self.call_left = self.call_left.saturating_sub(n);
        self.tokens = (self.tokens - n as f64).max(0.0);
    }

    /// Counts `n` bytes dropped because the budget just ran out.
    fn refuse(&mut self, n: usize) {
        let n = n as u64;
        if self.call_left == 0 {
            self.dropped(n, 0);
        } else {
            self.dropped(0, n);
        }
    }

    fn dropped(&mut self, over_call: u64, over_rate: u64) {
        self.over_call += over_call;
        self.over_rate += over_rate;
        let ring = ring();
        ring.dropped_over_call
            .fetch_add(over_call, Ordering::Relaxed);
        ring.dropped_over_rate
            .fetch_add(over_rate, Ordering::Relaxed);
    }

    /// Starts the next call's allowance; the line that says what the one
    /// ending dropped, if anything.
    fn notice(&mut self, in_call: bool) -> Option<String> {
        let (over_call, over_rate) = (self.over_call, self.over_rate);
        self.call_left = self.limits.call_bytes;
        self.over_call = 0;
        self.over_rate = 0;
        if over_call + over_rate == 0 {
            return None;
        }
        let whose = if in_call {
            "this call's output"
        } else {
            "output printed between calls"
        };
        let mut why = Vec::new();
        if over_call > 0 {
            why.push(format!(
                "{over_call} over the limit of {} bytes per call",
                self.limits.call_bytes
            ));
        }
        if over_rate > 0 {
            why.push(format!(
                "{over_rate} over the rate limit of {} bytes/s",
                self.limits.bytes_per_s
            ));
        }
        Some(format!(
            "sock: dropped {} bytes of {whose} ({})",
            over_call + over_rate,
            why.join(", ")
        ))
    }
}

/// Splits a byte stream into lines of at most MAX_LINE bytes.
#[derive(Default)]
struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        while !bytes.is_empty() {
            let room = MAX_LINE - self.pending.len();
            // A newline right after a full line still ends that line.
            let window = &bytes[..bytes.len().min(room + 1)];
            let (end, skip) = match window.iter().position(|b| *b == b'\n') {
                Some(i) => (i, 1),
                None if bytes.len() >= room => (room, 0),
                None => {
                    self.pending.extend_from_slice(bytes);
                    break;
                }
            };
            self.pending.extend_from_slice(&bytes[..end]);
            lines.push(text(&std::mem::take(&mut self.pending)));
            bytes = &bytes[end + skip..];
        }
        lines
    }

    /// The unfinished line, if any.
    fn take(&mut self) -> Option<String> {
        (!self.pending.is_empty()).then(|| text(&std::mem::take(&mut self.pending)))
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

    fn limits() -> Limits {
        Limits::of(&Config::default())
    }

    #[test]
    fn lines_are_split_across_chunks() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"hel"), Vec::<String>::new());
        assert_eq!(s.push(b"lo\nwor"), ["hello"]);
        assert_eq!(s.push(b"ld\r\n\n"), ["world", ""]);
        assert_eq!(s.push(b"tail"), Vec::<String>::new());
        assert_eq!(s.take().as_deref(), Some("tail"));
        assert_eq!(s.take(), None);
    }

    #[test]
    fn endless_lines_are_cut_not_buffered() {
        let mut s = LineSplitter::default();
        let lines = s.push(&vec![b'x'; MAX_LINE * 2 + 3]);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.len() == MAX_LINE));
        assert_eq!(s.take().as_deref(), Some("xxx"));
        let mut full = vec![b'y'; MAX_LINE];
        full.push(b'\n');
        assert_eq!(
            s.push(&full),
            ["y".repeat(MAX_LINE)],
            "no empty line after a full one"
        );
    }

    #[test]
    fn invalid_utf8_is_logged_lossily() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\xffb\n"), ["a\u{fffd}b"]);
    }

    fn line(function: &str, text: &str) -> LogLine {
        LogLine {
            function: function.into(),
            line: text.into(),
            ..LogLine::default()
        }
    }

    #[test]
    fn a_ring_keeps_the_latest_lines_within_its_bytes() {
        let mut rings = Rings::new(limits());
        for i in 0..RING_LINES + 5 {
            rings.push(line("f", &i.to_string()));
        }
        let kept = rings.read("f");
        assert_eq!(kept.len(), RING_LINES);
        assert_eq!(kept[0].line, "5");

        let mut rings = Rings::new(Limits {
            ring_bytes: 64 << 10,
            ..limits()
        });
        let long = "x".repeat(4000);
        for _ in 0..100 {
            rings.push(line("f", &long));
        }
        let kept = rings.read("f");
        let bytes: usize = kept.iter().map(size).sum();
        assert!(bytes <= 64 << 10, "{bytes} bytes kept");
        assert_eq!(rings.functions["f"].bytes, bytes);
        assert_eq!(kept.len(), (64 << 10) / size(&line("f", &long)));
    }

    #[test]
    fn the_function_written_longest_ago_loses_its_ring_first() {
        let mut rings = Rings::new(Limits {
            ring_functions: 3,
            ..limits()
        });
        for function in ["a", "b", "c"] {
            rings.push(line(function, "hello"));
        }
        rings.push(line("a", "again"));
        rings.push(line("d", "new"));
        assert!(rings.read("b").is_empty(), "b was written longest ago");
        for function in ["a", "c", "d"] {
            assert!(!rings.read(function).is_empty(), "{function} kept");
        }
        assert_eq!(rings.functions.len(), 3);
    }

    #[tokio::test]
    async fn lines_go_to_the_call_being_served_whatever_they_say() {
        use std::io::Write;

        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let origin = Origin {
            function: "logs-calls-fn".into(),
            sandbox: "logs-calls-sandbox".into(),
        };
        forward(origin, Some(read), None);
        let calls = take_calls("logs-calls-sandbox").expect("the forwarder's handle");
        let mut write = std::fs::File::from(write);
        let mut print = |text: &str| write.write_all(text.as_bytes()).expect("write");
        print("before\n");
        calls.begin("c1").await;
        print("one\n\u{1e}sock-call:c2\nunfinished");
        calls.end().await;
        print("between\n");
        calls.begin("c2").await;
        print("two\n");
        calls.end().await;
        let (kept, _) = ring().read("logs-calls-fn");
        let got: Vec<(&str, &str)> = kept
            .iter()
            .map(|l| (l.call_id.as_str(), l.line.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("", "before"),
                ("c1", "one"),
                ("c1", "\u{1e}sock-call:c2"),
                ("c1", "unfinished"),
                ("", "between"),
                ("c2", "two"),
            ]
        );
        assert!(ring().read("another-fn").0.is_empty());
    }

    #[test]
    fn the_budget_drops_what_is_over_the_call_limit_then_refills() {
        let mut budget = Budget::new(Limits {
            call_bytes: 100,
            bytes_per_s: 1 << 30,
            ..limits()
        });
        assert_eq!(budget.admit(60), 60);
        assert_eq!(budget.admit(60), 40);
        assert_eq!(budget.admit(10), 0);
        assert_eq!(
            budget.notice(true).as_deref(),
            Some(
                "sock: dropped 30 bytes of this call's output (30 over the limit of 100 bytes per call)"
            )
        );
        assert_eq!(budget.notice(true), None, "one notice per call");
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert_eq!(budget.admit(100), 100, "a new call, a refilled bucket");
    }

    #[tokio::test]
    async fn empty_lines_cost_like_text() {
        let (read, _write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let mut pipe = Pipe::new(read, "stdout").expect("a pipe");
        let mut forwarder = Forwarder {
            origin: Origin {
                function: "logs-empty-fn".into(),
                sandbox: "s".into(),
            },
            call_id: Some("c".into()),
            budget: Budget::new(Limits {
                call_bytes: 10 * (LINE_COST + 1),
                bytes_per_s: 1 << 30,
                ..limits()
            }),
        };
        forwarder.take(&mut pipe, &[b'\n'; 1000]);
        assert_eq!(ring().read("logs-empty-fn").0.len(), 10);
        assert_eq!(
            forwarder.budget.notice(true).as_deref(),
            Some(
                "sock: dropped 990 bytes of this call's output \
                 (990 over the limit of 1290 bytes per call)"
            )
        );
    }

    #[test]
    fn the_rate_limit_holds_across_calls() {
        let mut budget = Budget::new(Limits {
            call_bytes: 1000,
            bytes_per_s: 1,
            ..limits()
        });
        assert_eq!(budget.admit(1000), 1000);
        budget.notice(true);
        assert_eq!(budget.admit(500), 0, "the bucket is empty");
        let notice = budget.notice(false).expect("dropped");
        assert!(
            notice.contains("500 over the rate limit of 1 bytes/s")
                && notice.contains("between calls"),
            "{notice}"
        );
    }
}
