//! Things made ahead of need, so that starting a sandbox makes none: the
//! empty cgroups of [`CgroupPool`], the network namespaces of
//! [`NetnsPool`] and the children sandboxd's zygotes park. All keep up to a
//! cap, are taken last in first out, refill one refill at a time, and, once
//! closed, keep and make nothing more. What an item is, and how it is made
//! and thrown away, is theirs; a zygote, whose children are forked
//! asynchronously and wanted by demand, puts them one by one instead of
//! [`Spares::refill`].
//!
//! [`CgroupPool`]: crate::cgroups::CgroupPool
//! [`NetnsPool`]: crate::namespaces::NetnsPool
use std::sync::{Mutex, MutexGuard};

/// Up to `cap` items ready to take.
#[derive(Debug)]
pub struct Spares<T> {
    held: Mutex<Held<T>>,
    /// Held while refilling, so that close waits for a refill under way.
    refilling: Mutex<()>,
    cap: usize,
}

#[derive(Debug)]
struct Held<T> {
    items: Vec<T>,
    /// Set by [`Spares::close`]: nothing is kept any more.
    closed: bool,
}

impl<T> Spares<T> {
    pub fn new(cap: usize) -> Spares<T> {
        Spares {
            held: Mutex::new(Held {
                items: Vec::with_capacity(cap),
                closed: false,
            }),
            refilling: Mutex::new(()),
            cap,
        }
    }

    fn held(&self) -> MutexGuard<'_, Held<T>> {
        // Pushes, pops and a flag: poisoning cannot leave it broken.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many it keeps at most.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Items ready right now.
    pub fn len(&self) -> usize {
        self.held().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held().items.is_empty()
    }

    pub fn is_closed(&self) -> bool {
        self.held().closed
    }

    /// The item kept last, if any.
    pub fn take(&self) -> Option<T> {
        self.held().items.pop()
    }

    /// Keeps `item`, unless closed or full: then it comes back.
    pub fn put(&self, item: T) -> Result<(), T> {
        let mut held = self.held();
        if held.closed || held.items.len() >= self.cap {
            return Err(item);
        }
        held.items.push(item);
        Ok(())
    }

    /// Makes items with `make` until `cap` are ready. Stops at the first
    /// that `make` fails to make (its error comes back) or that is not
    /// kept (closed meanwhile: it goes to `discard`).
    pub fn refill<E>(
        &self,
        mut make: impl FnMut() -> Result<T, E>,
        discard: impl FnOnce(T),
    ) -> Result<(), E> {
        // Nothing is left half done inside: poisoning is harmless.
        let _refilling = self.refilling.lock().unwrap_or_else(|p| p.into_inner());
        while self.len() < self.cap {
            if let Err(item) = self.put(make()?) {
                discard(item);
                break;
            }
        }
        Ok(())
    }

    /// Keeps nothing from now on, and hands over the items ready, once a
    /// refill under way has ended (it discards what it makes after this).
    pub fn close(&self) -> Vec<T> {
        let items = {
            let mut held = self.held();
            held.closed = true;
            std::mem::take(&mut held.items)
        };
        drop(self.refilling.lock().unwrap_or_else(|p| p.into_inner()));
        items
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn it_keeps_up_to_its_cap_and_hands_out_the_last_kept_first() {
        let spares = Spares::new(2);
        assert_eq!(spares.take(), None);
        assert_eq!(spares.put(1), Ok(()));
        assert_eq!(spares.put(2), Ok(()));
        assert_eq!(spares.put(3), Err(3), "kept over the cap");
        assert_eq!(spares.len(), 2);
        assert_eq!(spares.take(), Some(2));
        assert_eq!(spares.take(), Some(1));
        assert_eq!(spares.take(), None);
    }

    #[test]
    fn a_refill_tops_up_to_the_cap_and_stops_at_the_first_failure() {
        let spares = Spares::new(3);
        spares.put(0).expect("room");
        let mut next = 0;
        let made = spares.refill(
            || {
                next += 1;
                Ok::<_, ()>(next)
            },
            |_| panic!("nothing to discard"),
        );
        assert_eq!(made, Ok(()));
        assert_eq!(next, 2, "made only what was missing");
        assert_eq!(spares.len(), 3);

        spares.take();
        spares.take();
        let mut tries = 0;
        let failed = spares.refill(
            || {
                tries += 1;
                if tries == 1 { Ok(7) } else { Err("no more") }
            },
            |_| panic!("nothing to discard"),
        );
        assert_eq!(failed, Err("no more"));
        assert_eq!(tries, 2, "stopped at the first failure");
        assert_eq!(spares.len(), 2);
    }

    #[test]
    fn once_closed_it_keeps_nothing_and_a_refill_discards_what_it_made() {
        let spares = Spares::new(3);
        spares.put(1).expect("room");
        spares.put(2).expect("room");
        assert_eq!(spares.close(), vec![1, 2], "the ready ones handed over");
        assert!(spares.is_closed());
        assert_eq!(spares.len(), 0);
        assert_eq!(spares.put(3), Err(3), "kept after close");
        let mut discarded = Vec::new();
        let mut made = 0;
        let refilled = spares.refill(
            || {
                made += 1;
                Ok::<_, ()>(made)
            },
            |item| discarded.push(item),
        );
        assert_eq!(refilled, Ok(()));
        assert_eq!((made, discarded), (1, vec![1]), "one made, then discarded");
        assert_eq!(spares.len(), 0);
    }

    #[test]
    fn close_waits_for_a_refill_under_way() {
        let spares = Arc::new(Spares::new(2));
        let (started, wait_started) = mpsc::channel();
        let (go, wait_go) = mpsc::channel::<()>();
        let refill = {
            let spares = spares.clone();
            std::thread::spawn(move || {
                let mut discarded = Vec::new();
                let mut first = true;
                let refilled = spares.refill(
                    || {
                        if first {
                            first = false;
                            started.send(()).expect("test waits");
                            wait_go.recv().expect("test says go");
                        }
                        Ok::<_, ()>(1)
                    },
                    |item| discarded.push(item),
                );
                (refilled, discarded)
            })
        };
        wait_started.recv().expect("refill started");
        let closing = {
            let spares = spares.clone();
            std::thread::spawn(move || spares.close())
        };
        // close marks the pool closed at once, then waits for the refill.
        while !spares.is_closed() {
            std::thread::yield_now();
        }
        assert!(!closing.is_finished(), "close did not wait for the refill");
        go.send(()).expect("refill waits");
        let (refilled, discarded) = refill.join().expect("refill thread");
        assert_eq!(refilled, Ok(()));
        assert_eq!(discarded, vec![1], "made after close, so discarded");
        assert_eq!(closing.join().expect("close thread"), Vec::<i32>::new());
        assert_eq!(spares.len(), 0);
    }
}
