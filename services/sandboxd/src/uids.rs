//! A uid per sandbox: each function sandbox runs as a uid (and a gid of the
//! same number) of its own, taken from `function_uid_base ..
//! function_uid_base + function_uids` and given back when the sandbox is
//! destroyed. So no two sandboxes (of one function or two) share a uid:
//! not a per-user kernel quota (processes, inotify instances, locked
//! memory), not the right to signal each other, not a file's owner.
//!
//! Defaults: `function_uid_base` 1879048192 (above systemd's container
//! ranges), `function_uids` 65536; a uid is taken back once its sandbox's
//! cgroup is empty. Fresh and forked sandboxes alike get one. Code and
//! package dirs are world-readable and mounted read-only, so any uid reads
//! them. Source builds run as `sandbox_uid` (65534) instead.
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::Error;

/// The configured range and the uids in use.
#[derive(Debug)]
pub(crate) struct UidPool {
    base: u32,
    count: u32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    in_use: HashSet<u32>,
    /// Where the search for a free uid starts: just after the last one
    /// taken, so a uid just given back is the last to be handed out again.
    next: u32,
}

/// A uid in use by one sandbox; back in the pool when dropped, which the
/// sandbox's teardown does after its cgroup is empty (no process of it
/// can still run with the uid).
#[derive(Debug)]
pub(crate) struct SandboxUid {
    uid: u32,
    pool: Arc<UidPool>,
}

impl SandboxUid {
    pub fn get(&self) -> u32 {
        self.uid
    }
}

impl Drop for SandboxUid {
    fn drop(&mut self) {
        self.pool.state().in_use.remove(&self.uid);
    }
}

impl UidPool {
    pub fn new(base: u32, count: u32) -> Arc<UidPool> {
        Arc::new(UidPool {
            base,
            count,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Inserts and removes only: poisoning cannot leave it broken.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A uid no live sandbox has.
    pub fn take(self: &Arc<Self>) -> Result<SandboxUid, Error> {
        let mut state = self.state();
        for step in 0..self.count {
            let offset = (state.next + step) % self.count;
            let uid = self.base + offset;
            if state.in_use.insert(uid) {
                state.next = (offset + 1) % self.count;
                return Ok(SandboxUid {
                    uid,
                    pool: self.clone(),
                });
            }
        }
        Err(Error::Uids {
            base: self.base,
            count: self.count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_sandboxes_never_share_a_uid_and_a_freed_one_comes_back_last() {
        let pool = UidPool::new(1000, 3);
        let a = pool.take().expect("a");
        let b = pool.take().expect("b");
        let c = pool.take().expect("c");
        assert_eq!([a.get(), b.get(), c.get()], [1000, 1001, 1002]);
        assert!(pool.take().is_err(), "the range is exhausted");
        drop(b);
        let d = pool.take().expect("d");
        assert_eq!(d.get(), 1001, "the only free one");
        drop(a);
        drop(c);
        // 1002 was freed last, but the search goes on after 1001.
        assert_eq!(pool.take().expect("e").get(), 1002);
    }
}
