//! How many children a zygote keeps parked: as many as it recently had
//! forks in flight at once ([`Demand`]), each fork counted while it runs
//! ([`Forking`]).
//!
//! Each zygote keeps children parked (`Zygote::park_spare`, refilled in
//! the background after every fork, with default limits), as many as its
//! peak of concurrent forks in this 60 s window or the last (1 to 4), so a
//! burst for one node does not queue on its fork loop; a fork then writes
//! the function's limits over the spare's cgroup and gives it the
//! function. A parked child is no zygote child (not counted, not in the
//! pool) and dies with its zygote.
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most children one zygote keeps parked.
pub(crate) const MAX_SPARES: usize = 4;
/// How long a peak of concurrent forks keeps its spares wanted.
const DEMAND_WINDOW: Duration = Duration::from_secs(60);

/// Concurrent forks of one zygote, which size its parked children: as many
/// as the highest concurrency of this window or the last, 1 to
/// [`MAX_SPARES`], so a burst of cold starts for one node finds children
/// ready instead of queueing on the zygote's fork loop.
pub(crate) struct Demand {
    forking: usize,
    peak: usize,
    last_peak: usize,
    since: Instant,
}

impl Demand {
    pub fn new(now: Instant) -> Demand {
        Demand {
            forking: 0,
            peak: 0,
            last_peak: 0,
            since: now,
        }
    }

    fn roll(&mut self, now: Instant) {
        if now.duration_since(self.since) >= DEMAND_WINDOW {
            self.last_peak = self.peak;
            self.peak = self.forking;
            self.since = now;
        }
    }

    fn started(&mut self, now: Instant) {
        self.roll(now);
        self.forking += 1;
        self.peak = self.peak.max(self.forking);
    }

    fn ended(&mut self) {
        self.forking = self.forking.saturating_sub(1);
    }

    pub fn wanted(&mut self, now: Instant) -> usize {
        self.roll(now);
        self.peak.max(self.last_peak).clamp(1, MAX_SPARES)
    }
}

/// One fork in flight, counted in its zygote's demand until dropped.
pub(crate) struct Forking<'a>(&'a Mutex<Demand>);

impl<'a> Forking<'a> {
    pub fn start(demand: &'a Mutex<Demand>) -> Forking<'a> {
        demand
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .started(Instant::now());
        Forking(demand)
    }
}

impl Drop for Forking<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).ended();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parked_children_follow_the_peak_of_concurrent_forks_for_two_windows() {
        let start = Instant::now();
        let mut demand = Demand::new(start);
        assert_eq!(demand.wanted(start), 1, "one child parked at rest");
        for _ in 0..3 {
            demand.started(start);
        }
        assert_eq!(demand.wanted(start), 3);
        for _ in 0..3 {
            demand.ended();
        }
        assert_eq!(demand.wanted(start), 3, "a burst keeps its children parked");
        let later = start + DEMAND_WINDOW;
        assert_eq!(demand.wanted(later), 3, "for the next window too");
        assert_eq!(demand.wanted(later + DEMAND_WINDOW), 1, "then back to one");
        for _ in 0..10 {
            demand.started(later);
        }
        assert_eq!(demand.wanted(later), MAX_SPARES, "never more than the cap");
    }
}
