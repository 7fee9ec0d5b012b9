//! One sandbox: start it, call it, destroy it.
//!
//! [`Sandbox`] is one live sandbox, made fresh here
//! ([`Sandboxes::create`]) or forked from a zygote ([`crate::zygote`]);
//! what all sandboxes share is [`crate::sandboxes`]'s, and one call's
//! exchange over the socket is [`crate::call`]'s. Destroying is the one
//! path every sandbox takes, whether the call succeeded, failed, timed
//! out, or the future was dropped: it kills everything in the sandbox's
//! cgroup and removes it. Destroying (see `sock_sandbox::cgroups`) returns
//! the cgroup to the pool, and only then the memory. At SIGTERM, after a
//! grace period, every sandbox is destroyed.
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use sock_proto::v1::{ErrorKind, HttpRequest};
use sock_sandbox::cgroups::{CgroupLimits, SandboxCgroup};
use sock_sandbox::init::{InitSpec, SETUP_FAILED};
use sock_sandbox::protocol::{self, Header, MAX_BODY_BYTES, ProtocolError};
use tokio::net::UnixStream;
use tokio::process::Child;

use crate::call::{Call, Outcome, exchange, function_error, http_header};
use crate::children::ChildOf;
use crate::error::Error;
use crate::logs::{self, Calls};
use crate::sandboxes::{Sandboxes, Shared};
use crate::spec::{SandboxSpec, check_spec};
use crate::uids::SandboxUid;

/// How long a runtime that closed its socket gets to exit before it is
/// killed anyway.
const EXIT_GRACE: Duration = Duration::from_secs(2);

impl Sandboxes {
    /// Starts a sandbox. The runtime imports the function's entry file in
    /// the background; [`Sandbox::invoke`] waits for it.
    pub async fn create(&self, spec: SandboxSpec) -> Result<Sandbox, Error> {
        let shared = &self.shared;
        check_spec(&spec, Some(&shared.cache_data_dir))?;
        let memory_mb = shared.memory_mb(&spec.limits);
        let limits = shared.cgroup_limits(&spec.limits);
        let function: Arc<str> = spec.function.as_str().into();
        let uid = shared.uids.take()?;
        let init_spec = InitSpec {
            code_dir: Some(spec.code_dir),
            package_dirs: spec.package_dirs,
            entry_file: if spec.entry_file.is_empty() {
                "f.py".into()
            } else {
                spec.entry_file
            },
            environment: spec.environment,
            uid: uid.get(),
            gid: uid.get(),
            ..self.init_spec()
        };
        self.start(function, memory_mb, limits, init_spec, true, Some(uid))
            .await
    }

    /// Starts an init running `init_spec` in a new cgroup with `limits`
    /// (`network`: a network namespace from the pool, else the host's).
    pub(crate) async fn start(
        &self,
        function: Arc<str>,
        memory_mb: u64,
        limits: CgroupLimits,
        init_spec: InitSpec,
        network: bool,
        uid: Option<SandboxUid>,
    ) -> Result<Sandbox, Error> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let cgroup = self.shared.take_cgroup(&id, limits)?;
        match self
            .spawn(&id, &function, init_spec, &cgroup, network)
            .await
        {
            Ok((child, conn)) => Ok(Sandbox::new(
                id,
                function,
                memory_mb,
                self.shared.clone(),
                Live {
                    cgroup,
                    child: Some(child),
                    conn,
                    ready: false,
                    parent: None,
                    uid,
                },
            )),
            Err(e) => {
                self.shared.abandon(&id, cgroup).await;
                Err(e)
            }
        }
    }
}

/// One sandbox. Dropping it destroys it (synchronously, in milliseconds);
/// prefer [`Sandbox::destroy`] in async code.
pub struct Sandbox {
    id: String,
    function: Arc<str>,
    memory_mb: u64,
    dirs: Vec<PathBuf>,
    shared: Arc<Shared>,
    live: Option<Live>,
    /// Tells the log forwarder which call the sandbox serves.
    calls: Option<Calls>,
    /// Whether the runtime was sent its limits (before the first call).
    limits_sent: bool,
}

pub(crate) struct Live {
    pub cgroup: Arc<SandboxCgroup>,
    /// The init; None for a zygote's child, whose parent is the zygote.
    pub child: Option<Child>,
    pub conn: UnixStream,
    pub ready: bool,
    /// Counts this sandbox among its zygote's live children.
    pub parent: Option<ChildOf>,
    /// The function sandbox's own uid; None for a zygote.
    pub uid: Option<SandboxUid>,
}

impl Sandbox {
    pub(crate) fn new(
        id: String,
        function: Arc<str>,
        memory_mb: u64,
        shared: Arc<Shared>,
        live: Live,
    ) -> Sandbox {
        Sandbox {
            dirs: live.cgroup.dirs(),
            live: Some(live),
            calls: logs::take_calls(&id),
            limits_sent: false,
            id,
            function,
            memory_mb,
            shared,
        }
    }

    /// Reads the next frame, which must be `expected`, within `timeout`.
    /// Anything else (the sandbox died, said something else, took too
    /// long) is an error naming what happened.
    pub(crate) async fn expect(
        &mut self,
        expected: Header,
        timeout: Duration,
    ) -> Result<(), String> {
        let Some(live) = self.live.as_mut() else {
            return Err("destroyed".into());
        };
        match tokio::time::timeout(timeout, protocol::read_frame(&mut live.conn)).await {
            Ok(Ok((header, _))) if header == expected => {
                if header == Header::Ready {
                    live.ready = true;
                }
                Ok(())
            }
            // A zygote whose import failed says which and why before it exits.
            Ok(Ok((Header::Error { message, .. }, _))) => Err(message),
            Ok(Ok((other, _))) => Err(format!("sent {other:?} instead of {expected:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no {expected:?} within {timeout:?}")),
        }
    }

    /// For a sandbox running a command (the installer): reads what it
    /// writes until it exits, keeping the last `keep` bytes, and says
    /// whether it exited with status 0. None when it ran past `timeout`
    /// (it is then destroyed) or was destroyed already.
    pub(crate) async fn output(
        &mut self,
        timeout: Duration,
        keep: usize,
    ) -> Option<(bool, Vec<u8>)> {
        let live = self.live.as_mut()?;
        let run = async {
            let mut tail = Vec::new();
            let mut chunk = vec![0u8; 8192];
            loop {
                match tokio::io::AsyncReadExt::read(&mut live.conn, &mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        tail.extend_from_slice(&chunk[..n]);
                        if tail.len() > 2 * keep {
                            tail.drain(..tail.len() - keep);
                        }
                    }
                }
            }
            if tail.len() > keep {
                tail.drain(..tail.len() - keep);
            }
            let status = match live.child.as_mut() {
                Some(child) => child.wait().await.ok(),
                None => None,
            };
            (status.is_some_and(|s| s.success()), tail)
        };
        let done = tokio::time::timeout(timeout, run).await.ok();
        self.destroy().await;
        done
    }

    /// Whether the runtime has closed its socket: a ready runtime only
    /// ever speaks when spoken to, so anything to read between calls means
    /// it is gone (say, killed with the zygote it was forked from).
    pub(crate) fn peer_closed(&self) -> bool {
        self.live
            .as_ref()
            .is_none_or(|live| live.ready && closed(live.conn.as_raw_fd()))
    }

    /// The socket to the runtime while the sandbox lives.
    pub(crate) fn conn(&self) -> Option<&UnixStream> {
        self.live.as_ref().map(|live| &live.conn)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the sandbox still runs; false once destroyed.
    pub fn is_alive(&self) -> bool {
        self.live.is_some()
    }

    /// The sandbox's cgroup directories while it lives. Cgroups are
    /// pooled: after destroy they are empty and may serve another sandbox.
    pub fn cgroup_dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The memory limit in MB.
    pub fn memory_mb(&self) -> u64 {
        self.memory_mb
    }

    /// The sandbox's cgroup while it lives.
    pub(crate) fn cgroup(&self) -> Option<Arc<SandboxCgroup>> {
        self.live.as_ref().map(|live| live.cgroup.clone())
    }

    /// Freezes the sandbox; returns the memory limit now in force (bytes).
    pub(crate) fn pause(&self) -> Result<u64, Error> {
        match &self.live {
            Some(live) => Ok(live.cgroup.pause()?),
            None => Err(Error::Destroyed {
                id: self.id.clone(),
            }),
        }
    }

    pub(crate) fn unpause(&self) -> Result<(), Error> {
        match &self.live {
            Some(live) => Ok(live.cgroup.unpause()?),
            None => Err(Error::Destroyed {
                id: self.id.clone(),
            }),
        }
    }

    /// Calls the function with `payload` (JSON bytes; empty means None).
    /// `timeout` covers the import of the entry file too on the first
    /// call. A timeout, a dead runtime or a broken reply destroys the
    /// sandbox; the outcome says what happened.
    pub async fn invoke(
        &mut self,
        call_id: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Outcome, Error> {
        self.invoke_within(call_id, payload, None, timeout, timeout)
            .await
    }

    /// [`invoke`](Self::invoke) with `timeout` left of a call whose limit
    /// is `limit` (the rest went waiting for memory); a timeout names the
    /// limit. With `http`, the call goes as an HTTP request, `payload` its
    /// body; the runtime serves it to the app or to f(event).
    pub(crate) async fn invoke_within(
        &mut self,
        call_id: &str,
        payload: &[u8],
        http: Option<&HttpRequest>,
        timeout: Duration,
        limit: Duration,
    ) -> Result<Outcome, Error> {
        if payload.len() > MAX_BODY_BYTES as usize {
            return Err(Error::InvalidRequest(format!(
                "payload is {} bytes, over the limit of {} MiB",
                payload.len(),
                MAX_BODY_BYTES >> 20
            )));
        }
        let Some(live) = self.live.as_mut() else {
            return Err(Error::Destroyed {
                id: self.id.clone(),
            });
        };
        let request = match http {
            None => Header::Invoke {
                call_id: call_id.into(),
            },
            Some(http) => http_header(call_id, http),
        };
        let max_result_bytes = self.shared.config.max_result_bytes;
        let call = Call {
            id: call_id,
            limits: (!self.limits_sent).then_some(Header::Limits { max_result_bytes }),
            request,
            payload,
            max_result_bytes,
        };
        let exchanged = tokio::time::timeout(
            timeout,
            exchange(&mut live.conn, &mut live.ready, self.calls.as_ref(), call),
        )
        .await;
        if matches!(exchanged, Ok(Ok(_))) {
            self.limits_sent = true;
        }
        match exchanged {
            Ok(Ok(outcome)) => Ok(outcome),
            // Only a function writing its own frames sends one over
            // `max_result_bytes`: the runtime refuses to.
            Ok(Err(ProtocolError::TooLarge {
                part: "body",
                len,
                limit,
            })) => {
                tracing::warn!(sandbox = %self.id, len, limit, "reply over max_result_bytes");
                // Its frame was not read: the stream cannot go on.
                self.destroy().await;
                Ok(Outcome::Error(function_error(
                    ErrorKind::Function,
                    format!(
                        "the function's reply is {len} bytes, over the limit of {limit} bytes; \
                         its sandbox was destroyed"
                    ),
                    String::new(),
                )))
            }
            Ok(Err(ProtocolError::Closed | ProtocolError::Io(_))) => self.died().await,
            Ok(Err(broken)) => {
                tracing::warn!(sandbox = %self.id, error = %broken, "runtime broke the protocol");
                self.destroy().await;
                Ok(Outcome::Error(function_error(
                    ErrorKind::Killed,
                    format!("sandbox sent an invalid reply ({broken}); it was destroyed"),
                    String::new(),
                )))
            }
            Err(_elapsed) => {
                self.destroy().await;
                Ok(Outcome::Error(function_error(
                    ErrorKind::Timeout,
                    format!("function exceeded its timeout of {} ms", limit.as_millis()),
                    String::new(),
                )))
            }
        }
    }

    /// The runtime closed its socket: find out why, then clean up.
    async fn died(&mut self) -> Result<Outcome, Error> {
        let live = self
            .live
            .as_mut()
            .expect("died() is only called on a live sandbox");
        let Some(child) = live.child.as_mut() else {
            // A zygote's child: no exit status to read, only the cgroup's
            // account of an OOM kill.
            let oom = live.cgroup.oom_killed();
            self.destroy().await;
            return Ok(Outcome::Error(if oom {
                function_error(
                    ErrorKind::OutOfMemory,
                    format!("function ran out of memory (limit {} MB)", self.memory_mb),
                    String::new(),
                )
            } else {
                function_error(
                    ErrorKind::Killed,
                    "the function's process exited unexpectedly; its sandbox was destroyed".into(),
                    String::new(),
                )
            }));
        };
        let status = tokio::time::timeout(EXIT_GRACE, child.wait()).await;
        let oom = live.cgroup.oom_killed();
        let ready = live.ready;
        self.destroy().await;
        let status = match status {
            Ok(Ok(status)) => status,
            _ => {
                return Ok(Outcome::Error(function_error(
                    ErrorKind::Killed,
                    "sandbox closed its connection to sandboxd; it was destroyed".into(),
                    String::new(),
                )));
            }
        };
        if oom {
            return Ok(Outcome::Error(function_error(
                ErrorKind::OutOfMemory,
                format!("function ran out of memory (limit {} MB)", self.memory_mb),
                String::new(),
            )));
        }
        if !ready && status.code() == Some(SETUP_FAILED) {
            return Err(Error::Setup {
                id: self.id.clone(),
                status: describe(status),
            });
        }
        Ok(Outcome::Error(function_error(
            ErrorKind::Killed,
            format!("sandbox exited unexpectedly ({})", describe(status)),
            String::new(),
        )))
    }

    /// Kills everything in the sandbox and removes its cgroup. Idempotent.
    pub async fn destroy(&mut self) {
        let Some(live) = self.live.take() else {
            return;
        };
        let shared = self.shared.clone();
        let id = self.id.clone();
        let function = self.function.clone();
        // Killing and waiting for the cgroup to drain blocks.
        let done = tokio::task::spawn_blocking(move || teardown(&shared, &id, &function, live));
        if let Err(e) = done.await {
            tracing::error!(sandbox = %self.id, error = %e, "sandbox teardown panicked");
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            teardown(&self.shared, &self.id, &self.function, live);
        }
    }
}

fn teardown(shared: &Shared, id: &str, function: &str, live: Live) {
    let Live {
        cgroup,
        child,
        conn,
        parent,
        uid,
        ..
    } = live;
    drop(conn);
    shared.release(id, &cgroup);
    // Every process of the sandbox is dead: its uid may serve another.
    drop(uid);
    // The init was in the cgroup, so it is dead now; reap it here, or let
    // tokio's orphan reaper do it if the kernel is slow to report it.
    if let Some(mut child) = child {
        let _ = child.try_wait();
    }
    drop(parent);
    tracing::debug!(sandbox = %id, function, "sandbox destroyed");
}

/// Whether the peer of a socket that carries nothing unasked has gone.
pub(crate) fn closed(fd: std::os::fd::RawFd) -> bool {
    let mut byte = [0u8; 1];
    !matches!(
        nix::sys::socket::recv(
            fd,
            &mut byte,
            nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ),
        Err(nix::errno::Errno::EAGAIN)
    )
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
            Ok(name) => format!("signal {signal} ({})", name.as_str()),
            Err(_) => format!("signal {signal}"),
        },
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_like_a_person_would_say_them() {
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(describe(ExitStatus::from_raw(9)), "signal 9 (SIGKILL)");
    }
}
