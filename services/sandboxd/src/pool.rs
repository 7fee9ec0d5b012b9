//! The node's memory pool: every sandbox reserves its memory limit before
//! it starts and gives it back when it is destroyed. A paused sandbox,
//! whose cgroup limit sandboxd shrinks to what it uses, holds only that
//! ([`Reservation::shrink_to`]) and takes its full limit back before it
//! thaws ([`Reservation::absorb`] of a new reservation), so the kernel's
//! limits never add up to more than the pool and a running call is never
//! killed to make room for a thawed one.
//!
//! Requests that do not fit wait in one FIFO queue, each bounded by its own
//! deadline. Only the head of the queue is ever granted, so a large request
//! is not overtaken forever by small ones; and since the head leaves the
//! queue at its deadline at the latest, the small ones behind it are not
//! blocked forever either. When the head cannot fit, [`MemoryPool::pressure`]
//! wakes the evictor.
//!
//! The pool counts KiB: a paused sandbox holds a MiB or two, and rounding
//! each up to a whole MB would cost a third of the density.
//!
//! Its size is `mem_pool_mb` (0 = the machine's RAM minus 500 MB). A
//! paused sandbox whose shrink v1 refused holds its full limit. When a
//! thaw's reservation cannot be had by the call's deadline, the paused
//! sandbox is destroyed and the call goes the cold way. A deadline passing
//! in the queue is RESOURCE_EXHAUSTED "memory pool full: N MB reserved of
//! M MB; …". A waiter also takes the next sandbox of its version that goes
//! idle.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

const KIB_PER_MB: u64 = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error(
        "the function needs {need_mb} MB of memory but this node's memory pool is only \
         {total_mb} MB; lower the function's memory limit"
    )]
    TooLarge { need_mb: u64, total_mb: u64 },
    #[error(
        "memory pool full: {reserved_mb} MB reserved of {total_mb} MB; the call waited \
         {waited_ms} ms for {need_mb} MB and its deadline passed; retry later or lower the \
         function's memory limit"
    )]
    Full {
        need_mb: u64,
        reserved_mb: u64,
        total_mb: u64,
        waited_ms: u64,
    },
}

/// Numbers for Status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolSnapshot {
    pub total_mb: u64,
    pub reserved_kib: u64,
    pub waiting: u32,
}

impl PoolSnapshot {
    /// Reserved memory in whole MB, rounded up.
    pub fn reserved_mb(&self) -> u64 {
        self.reserved_kib.div_ceil(KIB_PER_MB)
    }
}

#[derive(Debug)]
pub struct MemoryPool {
    total_kib: u64,
    state: Mutex<State>,
    pressure: Notify,
}

#[derive(Debug, Default)]
struct State {
    reserved_kib: u64,
    queue: VecDeque<Waiter>,
    next_id: u64,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    kib: u64,
    grant: oneshot::Sender<Reservation>,
}

/// Memory held from the pool; dropping it gives the memory back.
#[derive(Debug)]
pub struct Reservation {
    pool: Arc<MemoryPool>,
    kib: u64,
}

impl Reservation {
    pub fn kib(&self) -> u64 {
        self.kib
    }

    #[cfg(test)]
    pub fn mb(&self) -> u64 {
        self.kib.div_ceil(KIB_PER_MB)
    }

    /// Gives back all but `bytes` (rounded up to a KiB); holds at most what
    /// it held.
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = bytes.div_ceil(1024).min(self.kib);
        let freed = self.kib - keep;
        if freed > 0 {
            self.kib = keep;
            self.pool.give_back(freed);
        }
    }

    /// Takes `more` into this reservation (both from the same pool).
    pub fn absorb(&mut self, mut more: Reservation) {
        debug_assert!(Arc::ptr_eq(&self.pool, &more.pool), "one pool");
        self.kib += std::mem::take(&mut more.kib);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.kib > 0 {
            self.pool.give_back(self.kib);
        }
    }
}

/// Sends grants outside the pool's lock: a grant whose waiter has gone
/// comes back as an error and is dropped, which releases it again.
fn deliver(granted: Vec<(oneshot::Sender<Reservation>, Reservation)>) {
    for (tx, reservation) in granted {
        drop(tx.send(reservation));
    }
}

impl MemoryPool {
    pub fn new(total_mb: u64) -> Arc<MemoryPool> {
        Arc::new(MemoryPool {
            total_kib: total_mb.saturating_mul(KIB_PER_MB),
            state: Mutex::new(State::default()),
            pressure: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the numbers consistent before it
        // could panic, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn total_mb(&self) -> u64 {
        self.total_kib / KIB_PER_MB
    }

    fn give_back(self: &Arc<Self>, kib: u64) {
        let granted = {
            let mut state = self.state();
            state.reserved_kib -= kib;
            self.grant_from_head(&mut state)
        };
        deliver(granted);
    }

    pub fn snapshot(&self) -> PoolSnapshot {
        let state = self.state();
        PoolSnapshot {
            total_mb: self.total_mb(),
            reserved_kib: state.reserved_kib,
            waiting: u32::try_from(state.queue.len()).unwrap_or(u32::MAX),
        }
    }

    /// How many KiB the head of the queue lacks; 0 when nobody waits.
    pub fn shortfall_kib(&self) -> u64 {
        let state = self.state();
        state.queue.front().map_or(0, |head| {
            (state.reserved_kib + head.kib).saturating_sub(self.total_kib)
        })
    }

    /// Resolves when a request is waiting for memory that is not free.
    pub async fn pressure(&self) {
        self.pressure.notified().await;
    }

    /// Wakes whoever waits on [`pressure`](Self::pressure) if a request is
    /// still short of memory (say, after a sandbox went idle).
    pub fn nudge(&self) {
        if self.shortfall_kib() > 0 {
            self.pressure.notify_one();
        }
    }

    /// Reserves `mb` only if it is free now and no call waits: for what
    /// merely speeds calls up (zygotes), never at a call's expense.
    pub fn try_reserve(self: &Arc<Self>, mb: u64) -> Option<Reservation> {
        self.take_now(&mut self.state(), mb.saturating_mul(KIB_PER_MB))
    }

    /// Takes `kib` at once if no one waits and it fits.
    fn take_now(self: &Arc<Self>, state: &mut State, kib: u64) -> Option<Reservation> {
        if !state.queue.is_empty() || state.reserved_kib + kib > self.total_kib {
            return None;
        }
        state.reserved_kib += kib;
        Some(Reservation {
            pool: self.clone(),
            kib,
        })
    }

    /// Reserves `mb`, waiting in line until `deadline` when the pool is full.
    pub async fn reserve(
        self: &Arc<Self>,
        mb: u64,
        deadline: Instant,
    ) -> Result<Reservation, PoolError> {
        self.reserve_kib(mb.saturating_mul(KIB_PER_MB), deadline)
            .await
    }

    /// [`reserve`](Self::reserve) by the KiB: what a paused sandbox lacks
    /// of its full limit.
    pub async fn reserve_kib(
        self: &Arc<Self>,
        kib: u64,
        deadline: Instant,
    ) -> Result<Reservation, PoolError> {
        let need_mb = kib.div_ceil(KIB_PER_MB);
        if kib > self.total_kib {
            return Err(PoolError::TooLarge {
                need_mb,
                total_mb: self.total_mb(),
            });
        }
        let started = Instant::now();
        let (id, mut rx) = {
            let mut state = self.state();
            if let Some(reservation) = self.take_now(&mut state, kib) {
                return Ok(reservation);
            }
            let id = state.next_id;
            state.next_id += 1;
            let (tx, rx) = oneshot::channel();
            state.queue.push_back(Waiter { id, kib, grant: tx });
            (id, rx)
        };
        self.pressure.notify_one();
        // Leaves the queue if this future is dropped while waiting.
        let mut guard = QueueGuard {
            pool: self,
            id: Some(id),
        };
        match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(Ok(reservation)) => {
                guard.id = None;
                Ok(reservation)
            }
            // The sender is only dropped after a send, or by leave() below.
            Ok(Err(_)) | Err(_) => {
                guard.leave();
                // Granted between the timeout and leaving the queue.
                if let Ok(reservation) = rx.try_recv() {
                    return Ok(reservation);
                }
                let reserved_mb = self.snapshot().reserved_mb();
                Err(PoolError::Full {
                    need_mb,
                    reserved_mb,
                    total_mb: self.total_mb(),
                    waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                })
            }
        }
    }

    /// Grants the head of the queue for as long as it fits.
    fn grant_from_head(
        self: &Arc<Self>,
        state: &mut State,
    ) -> Vec<(oneshot::Sender<Reservation>, Reservation)> {
        let mut granted = Vec::new();
        while let Some(head) = state.queue.front() {
            if state.reserved_kib + head.kib > self.total_kib {
                self.pressure.notify_one();
                break;
            }
            let head = state.queue.pop_front().expect("front exists");
            state.reserved_kib += head.kib;
            granted.push((
                head.grant,
                Reservation {
                    pool: self.clone(),
                    kib: head.kib,
                },
            ));
        }
        granted
    }
}

struct QueueGuard<'a> {
    pool: &'a Arc<MemoryPool>,
    id: Option<u64>,
}

impl QueueGuard<'_> {
    /// Removes the waiter, then lets whoever was behind it go if they fit.
    fn leave(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        let granted = {
            let mut state = self.pool.state();
            state.queue.retain(|w| w.id != id);
            self.pool.grant_from_head(&mut state)
        };
        deliver(granted);
    }
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn in_secs(s: u64) -> Instant {
        Instant::now() + Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_are_granted_while_they_fit_and_given_back_on_drop() {
        let pool = MemoryPool::new(256);
        let a = pool.reserve(128, in_secs(1)).await.expect("a");
        let b = pool.reserve(128, in_secs(1)).await.expect("b");
        assert_eq!(pool.snapshot().reserved_mb(), 256);
        drop(a);
        assert_eq!(pool.snapshot().reserved_mb(), 128);
        drop(b);
        assert_eq!(pool.snapshot().reserved_mb(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_runs_when_memory_is_given_back() {
        let pool = MemoryPool::new(256);
        let held = pool.reserve(256, in_secs(1)).await.expect("held");
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { pool.reserve(128, in_secs(10)).await.map(|r| r.mb()) }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(pool.snapshot().waiting, 1);
        assert_eq!(pool.shortfall_kib(), 128 * 1024);
        drop(held);
        assert_eq!(waiter.await.expect("task"), Ok(128));
        assert_eq!(
            pool.snapshot(),
            PoolSnapshot {
                total_mb: 256,
                reserved_kib: 0,
                waiting: 0
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_passed_deadline_says_the_pool_is_full() {
        let pool = MemoryPool::new(256);
        let _held = pool.reserve(200, in_secs(1)).await.expect("held");
        let err = pool
            .reserve(128, Instant::now() + Duration::from_millis(300))
            .await
            .expect_err("no room");
        assert_eq!(
            err,
            PoolError::Full {
                need_mb: 128,
                reserved_mb: 200,
                total_mb: 256,
                waited_ms: 300
            }
        );
        assert!(
            err.to_string()
                .starts_with("memory pool full: 200 MB reserved of 256 MB"),
            "{err}"
        );
        assert_eq!(pool.snapshot().waiting, 0, "the waiter left the queue");
    }

    #[tokio::test(start_paused = true)]
    async fn larger_than_the_pool_is_refused_at_once() {
        let pool = MemoryPool::new(256);
        let err = pool.reserve(512, in_secs(60)).await.expect_err("too big");
        assert!(matches!(err, PoolError::TooLarge { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("lower the function's memory limit")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_head_is_not_overtaken_by_small_ones() {
        let pool = MemoryPool::new(300);
        let first = pool.reserve(100, in_secs(1)).await.expect("first");
        let second = pool.reserve(100, in_secs(1)).await.expect("second");
        let large = tokio::spawn({
            let pool = pool.clone();
            async move { pool.reserve(250, in_secs(60)).await.map(|r| r.mb()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // 100 MB are free, but the large request is first in line.
        let small = tokio::spawn({
            let pool = pool.clone();
            async move { pool.reserve(50, in_secs(60)).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(pool.snapshot().waiting, 2);
        drop(first);
        drop(second);
        assert_eq!(large.await.expect("task"), Ok(250));
        let small = small.await.expect("task").expect("small runs after");
        assert_eq!(small.mb(), 50);
        drop(small);
        assert_eq!(pool.snapshot().reserved_mb(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn small_ones_go_once_a_stuck_large_head_gives_up() {
        let pool = MemoryPool::new(300);
        let _held = pool.reserve(200, in_secs(1)).await.expect("held");
        let large = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.reserve(250, Instant::now() + Duration::from_secs(2))
                    .await
                    .map(|r| r.mb())
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let small = tokio::spawn({
            let pool = pool.clone();
            async move { pool.reserve(50, in_secs(60)).await.map(|r| r.mb()) }
        });
        assert!(matches!(
            large.await.expect("task"),
            Err(PoolError::Full { .. })
        ));
        assert_eq!(small.await.expect("task"), Ok(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_loses_nothing_and_blocks_nobody() {
        let pool = MemoryPool::new(100);
        let held = pool.reserve(100, in_secs(1)).await.expect("held");
        let cancelled = tokio::spawn({
            let pool = pool.clone();
            async move { pool.reserve(100, in_secs(60)).await.map(|r| r.mb()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let behind = tokio::spawn({
            let pool = pool.clone();
            async move { pool.reserve(60, in_secs(60)).await.map(|r| r.mb()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        cancelled.abort();
        let _ = cancelled.await;
        drop(held);
        assert_eq!(behind.await.expect("task"), Ok(60));
        assert_eq!(
            pool.snapshot(),
            PoolSnapshot {
                total_mb: 100,
                reserved_kib: 0,
                waiting: 0
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shrunk_reservation_lets_a_waiter_in_and_grows_back_only_in_line() {
        let pool = MemoryPool::new(256);
        let mut paused = pool.reserve(128, in_secs(1)).await.expect("paused");
        let _running = pool.reserve(128, in_secs(1)).await.expect("running");
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { pool.reserve(100, in_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(pool.snapshot().waiting, 1);

        // What a paused sandbox's cgroup charges: about 1.5 MiB.
        paused.shrink_to(1_600_000);
        assert_eq!(paused.kib(), 1563, "rounded up to a KiB");
        let waiter = waiter.await.expect("task").expect("granted by the shrink");
        assert_eq!(pool.snapshot().reserved_kib, 1563 + 228 * 1024);
        paused.shrink_to(u64::MAX);
        assert_eq!(paused.kib(), 1563, "a shrink never grows");

        // Thawing needs the rest of its limit back: not while it is taken.
        let lack = 128 * 1024 - paused.kib();
        let err = pool
            .reserve_kib(lack, Instant::now() + Duration::from_millis(300))
            .await
            .expect_err("no room to thaw");
        assert!(matches!(err, PoolError::Full { need_mb: 127, .. }), "{err}");
        drop(waiter);
        let more = pool.reserve_kib(lack, in_secs(1)).await.expect("room");
        paused.absorb(more);
        assert_eq!(paused.kib(), 128 * 1024);
        assert_eq!(pool.snapshot().reserved_mb(), 256);
        drop(paused);
        assert_eq!(pool.snapshot().reserved_mb(), 128);
    }

    #[tokio::test(start_paused = true)]
    async fn the_evictor_hears_about_a_request_that_does_not_fit() {
        let pool = MemoryPool::new(100);
        let held = pool.reserve(80, in_secs(1)).await.expect("held");
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { pool.reserve(50, in_secs(60)).await.map(|r| r.mb()) }
        });
        tokio::time::timeout(Duration::from_secs(1), pool.pressure())
            .await
            .expect("pressure signalled");
        assert_eq!(pool.shortfall_kib(), 30 * 1024);
        drop(held);
        assert_eq!(waiter.await.expect("task"), Ok(50));
        assert_eq!(pool.shortfall_kib(), 0);
    }
}
