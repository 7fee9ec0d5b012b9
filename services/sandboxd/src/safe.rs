//! `SafeSandbox`: the one way the rest of sandboxd touches a sandbox.
//!
//! A mutex-guarded state machine: Idle ⇄ Running, Idle → Paused → Running,
//! anything → Destroyed. A running sandbox is owned by its call through a
//! [`Lease`]; the state machine only remembers that it is out. Any failed
//! operation destroys the sandbox; every operation on a destroyed sandbox
//! does nothing (a lease is [`Unleased::Gone`]). Each transition is told to the
//! listeners (metrics, logs); the memory reservation is released only once
//! the sandbox's processes are gone. A paused sandbox holds only the memory
//! its shrunk limit allows and must get the rest back before it thaws.
//! A failed pause or unpause destroys the sandbox. The events (created,
//! paused, unpaused, exited, destroyed and why) reach the listeners (the
//! metrics registry, the debug log) synchronously.
use sock_sandbox::cgroups::SandboxCgroup;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::pool::Reservation;
use crate::sandbox::Sandbox;

/// One version of one function: what a warm sandbox can serve.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub name: Arc<str>,
    pub version: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventKind {
    Created,
    Paused,
    Unpaused,
    /// The runtime died on its own (crash, OOM kill, exit).
    Exited,
    Destroyed(Why),
}

/// Why a sandbox was destroyed, for logs and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// The call failed in a way that leaves the sandbox unusable.
    CallFailed,
    /// The call's future was dropped mid-call.
    Cancelled,
    Evicted,
    /// A newer version of the function exists.
    Retired,
    /// Its one call is over (`reuse-sandbox: false`).
    OneCall,
    Shutdown,
    /// Pausing or unpausing failed.
    Broken,
    /// Its runtime died while it waited idle or paused.
    Died,
}

#[derive(Debug)]
pub(crate) struct Event<'a> {
    pub sandbox: &'a str,
    pub key: &'a Key,
    pub kind: EventKind,
}

/// Hears every lifecycle event, synchronously and in order (so counters
/// never miss one); must not block.
pub(crate) trait Listener: Send + Sync {
    fn on_event(&self, event: &Event<'_>);
}

pub(crate) type Listeners = Arc<[Arc<dyn Listener>]>;

/// Why [`SafeSandbox::lease`] handed out no sandbox.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unleased {
    /// Destroyed, running, or broken by the thaw.
    Gone,
    /// Paused, and its reservation lacks this many KiB of its full limit:
    /// reserve them and lease again with them.
    Short { kib: u64 },
}

/// What the state machine holds: the sandbox itself unless a call has it.
enum State {
    Idle(Sandbox),
    Paused(Sandbox),
    Running,
    Destroyed,
}

/// Coarse state for counters and the evictor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Idle,
    Paused,
    Running,
    Destroyed,
}

struct Inner {
    state: State,
    /// When the sandbox last finished a call (or was created).
    last_used: Instant,
    /// Bumped on every transition to Idle, so a pause scheduled for an
    /// earlier idle period does nothing.
    idle_epoch: u64,
    reservation: Option<Reservation>,
}

pub(crate) struct SafeSandbox {
    id: String,
    key: Key,
    /// For reading memory use while a call holds the sandbox.
    cgroup: Option<Arc<SandboxCgroup>>,
    /// The reservation it runs with: its full memory limit.
    full_kib: u64,
    inner: Mutex<Inner>,
    listeners: Listeners,
}

impl SafeSandbox {
    /// Wraps a sandbox that is about to run its first call; the returned
    /// lease is that call's.
    pub fn start(
        sandbox: Sandbox,
        key: Key,
        reservation: Reservation,
        listeners: Listeners,
    ) -> (Arc<SafeSandbox>, Lease) {
        let safe = Arc::new(SafeSandbox {
            id: sandbox.id().to_string(),
            key,
            cgroup: sandbox.cgroup(),
            full_kib: reservation.kib(),
            inner: Mutex::new(Inner {
                state: State::Running,
                last_used: Instant::now(),
                idle_epoch: 0,
                reservation: Some(reservation),
            }),
            listeners,
        });
        safe.emit(EventKind::Created);
        let lease = Lease {
            safe: safe.clone(),
            sandbox: Some(sandbox),
        };
        (safe, lease)
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Transitions replace the state in one assignment; a panic cannot
        // leave it half-changed.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, kind: EventKind) {
        let event = Event {
            sandbox: &self.id,
            key: &self.key,
            kind,
        };
        for listener in self.listeners.iter() {
            listener.on_event(&event);
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    pub fn phase(&self) -> Phase {
        match self.inner().state {
            State::Idle(_) => Phase::Idle,
            State::Paused(_) => Phase::Paused,
            State::Running => Phase::Running,
            State::Destroyed => Phase::Destroyed,
        }
    }

    pub fn last_used(&self) -> Instant {
        self.inner().last_used
    }

    /// Whether it waits idle or paused with its runtime gone (killed from
    /// outside, or with its zygote).
    pub fn dead_while_waiting(&self) -> bool {
        match &self.inner().state {
            State::Idle(sandbox) | State::Paused(sandbox) => sandbox.peer_closed(),
            State::Running | State::Destroyed => false,
        }
    }

    /// Memory the sandbox's cgroup charges right now; 0 once destroyed.
    pub fn memory_usage(&self) -> u64 {
        match self.phase() {
            Phase::Destroyed => 0,
            _ => self.cgroup.as_ref().map_or(0, |c| c.memory_usage()),
        }
    }

    /// Idle or Paused → Running: hands the sandbox to a call, thawing it
    /// first if it was paused. `topup` joins its reservation first: a
    /// paused sandbox thaws only once it holds its full limit again.
    /// Blocks for the thaw (microseconds).
    pub fn lease(self: &Arc<Self>, topup: Option<Reservation>) -> Result<Lease, Unleased> {
        let mut inner = self.inner();
        if let (Some(held), Some(more)) = (inner.reservation.as_mut(), topup) {
            held.absorb(more);
        }
        let sandbox = match std::mem::replace(&mut inner.state, State::Running) {
            State::Idle(sandbox) => sandbox,
            State::Paused(sandbox) => {
                let held = inner.reservation.as_ref().map_or(0, Reservation::kib);
                if held < self.full_kib {
                    inner.state = State::Paused(sandbox);
                    return Err(Unleased::Short {
                        kib: self.full_kib - held,
                    });
                }
                if let Err(e) = sandbox.unpause() {
                    tracing::warn!(sandbox = %self.id, error = %e, "cannot unpause sandbox");
                    drop(inner);
                    self.clone().destroy_off_runtime(sandbox, Why::Broken);
                    return Err(Unleased::Gone);
                }
                self.emit(EventKind::Unpaused);
                sandbox
            }
            other => {
                inner.state = other;
                return Err(Unleased::Gone);
            }
        };
        Ok(Lease {
            safe: self.clone(),
            sandbox: Some(sandbox),
        })
    }

    /// Idle → Paused, but only if the sandbox has been idle since `epoch`
    /// began; its reservation shrinks to the limit the pause left it.
    /// Blocks while the cgroup freezes (milliseconds).
    pub fn pause(&self, epoch: u64) {
        let mut inner = self.inner();
        if inner.idle_epoch != epoch || !matches!(inner.state, State::Idle(_)) {
            return;
        }
        let State::Idle(sandbox) = std::mem::replace(&mut inner.state, State::Running) else {
            unreachable!("checked above");
        };
        match sandbox.pause() {
            Ok(limit) => {
                if limit > 0
                    && let Some(held) = inner.reservation.as_mut()
                {
                    held.shrink_to(limit);
                }
                inner.state = State::Paused(sandbox);
                drop(inner);
                self.emit(EventKind::Paused);
            }
            Err(e) => {
                tracing::warn!(sandbox = %self.id, error = %e, "cannot pause sandbox");
                self.destroy_locked(inner, Some(sandbox), Why::Broken);
            }
        }
    }

    /// Any → Destroyed. Blocks until the processes are gone. A running
    /// sandbox is only marked: its call ends soon (shutdown kills its
    /// processes) and the lease then tears it down.
    pub fn destroy(&self, why: Why) {
        let mut inner = self.inner();
        let sandbox = match std::mem::replace(&mut inner.state, State::Destroyed) {
            State::Idle(s) | State::Paused(s) => s,
            State::Running | State::Destroyed => return,
        };
        self.destroy_locked(inner, Some(sandbox), why);
    }

    fn destroy_locked(&self, mut inner: MutexGuard<'_, Inner>, sandbox: Option<Sandbox>, why: Why) {
        inner.state = State::Destroyed;
        let reservation = inner.reservation.take();
        drop(inner);
        // Teardown before the memory goes back to the pool: the next
        // sandbox must not start while this one still holds its pages.
        drop(sandbox);
        if reservation.is_some() {
            drop(reservation);
            self.emit(EventKind::Destroyed(why));
        }
    }

    /// Any → Destroyed, with `sandbox` (taken out of its state by the
    /// caller) torn down where it does not hold up a runtime thread: a
    /// teardown waits for the kernel (kill, reap, drain the cgroup). The
    /// reservation is held until it is done.
    fn destroy_off_runtime(self: Arc<Self>, sandbox: Sandbox, why: Why) {
        off_runtime(move || {
            let inner = self.inner();
            self.destroy_locked(inner, Some(sandbox), why);
        });
    }

    /// The runtime died on its own during a call.
    pub fn exited(&self) {
        self.emit(EventKind::Exited);
    }
}

/// One call's hold on a running sandbox. Dropped without [`Lease::keep`]
/// or [`Lease::discard`] (the call was cancelled), it destroys the sandbox.
pub(crate) struct Lease {
    safe: Arc<SafeSandbox>,
    sandbox: Option<Sandbox>,
}

impl Lease {
    pub fn sandbox(&mut self) -> &mut Sandbox {
        self.sandbox
            .as_mut()
            .expect("a lease holds its sandbox until it ends")
    }

    pub fn safe(&self) -> &Arc<SafeSandbox> {
        &self.safe
    }

    /// Running → Idle; returns the idle epoch for the pause timer, or None
    /// when the sandbox died or was destroyed meanwhile (it is then torn
    /// down on a blocking thread).
    pub fn keep(mut self) -> Option<u64> {
        let sandbox = self.sandbox.take().expect("a lease ends once");
        let mut inner = self.safe.inner();
        if sandbox.is_alive() && matches!(inner.state, State::Running) {
            inner.state = State::Idle(sandbox);
            inner.last_used = Instant::now();
            inner.idle_epoch += 1;
            return Some(inner.idle_epoch);
        }
        drop(inner);
        self.safe
            .clone()
            .destroy_off_runtime(sandbox, Why::CallFailed);
        None
    }

    /// Running → Destroyed. Blocks for the teardown.
    pub fn discard(mut self, why: Why) {
        let sandbox = self.sandbox.take().expect("a lease ends once");
        let inner = self.safe.inner();
        self.safe.destroy_locked(inner, Some(sandbox), why);
    }
}

impl Drop for Lease {
    /// A cancelled call drops its lease where its future was dropped.
    fn drop(&mut self) {
        if let Some(sandbox) = self.sandbox.take() {
            self.safe
                .clone()
                .destroy_off_runtime(sandbox, Why::Cancelled);
        }
    }
}

/// Runs `work`, which blocks, on a blocking thread when called on a tokio
/// runtime, else here.
pub(crate) fn off_runtime(work: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(work)),
        Err(_) => work(),
    }
}
