//! When `sock up` restarts a service that died, and when it gives up: the
//! policy alone, no processes or clocks (the caller says how long each run
//! served), so every rule is tested as plain arithmetic.
//!
//! Like Docker's restart back-off: the first restart waits
//! [`FIRST_DELAY`], each further one twice as long, up to [`MAX_DELAY`];
//! a run that served [`RESET_AFTER`] puts the delay back to the first.
//! Unlike Docker, a service that cannot run at all is not retried for
//! ever: [`FAST_EXITS_ALLOWED`] fast exits in a row (a run that never
//! answered health, or answered it for less than [`FAST_WITHIN`]) mean
//! the next start would fail the same way, and the suite stops, saying so.
use std::time::Duration;

/// Delay before the first restart, and again once a run was stable.
pub const FIRST_DELAY: Duration = Duration::from_millis(500);
/// The delay doubles up to this, for a service that crashes again and
/// again, yet each time after serving a while.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// A run that served this long was stable: the next delay is the first.
pub const RESET_AFTER: Duration = Duration::from_secs(60);
/// A run that ended before serving this long failed fast.
pub const FAST_WITHIN: Duration = Duration::from_secs(10);
/// Fast exits in a row that stop the suite.
pub const FAST_EXITS_ALLOWED: u32 = 5;

/// What to do about a service's exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Start it again after this delay.
    RestartAfter(Duration),
    /// It failed fast this many times in a row: stop everything.
    GiveUp { fast_exits: u32 },
}

/// One service's restart history.
#[derive(Debug)]
pub struct Restarts {
    next_delay: Duration,
    fast_exits: u32,
}

impl Default for Restarts {
    fn default() -> Self {
        Restarts {
            next_delay: FIRST_DELAY,
            fast_exits: 0,
        }
    }
}

impl Restarts {
    /// The service exited after answering health for `served` (`None`: it
    /// never did).
    pub fn exited(&mut self, served: Option<Duration>) -> Verdict {
        let served = served.unwrap_or_default();
        if served >= RESET_AFTER {
            self.next_delay = FIRST_DELAY;
        }
        if served < FAST_WITHIN {
            self.fast_exits += 1;
            if self.fast_exits >= FAST_EXITS_ALLOWED {
                return Verdict::GiveUp {
                    fast_exits: self.fast_exits,
                };
            }
        } else {
            self.fast_exits = 0;
        }
        let delay = self.next_delay;
        self.next_delay = (delay * 2).min(MAX_DELAY);
        Verdict::RestartAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn delay(verdict: Verdict) -> Duration {
        match verdict {
            Verdict::RestartAfter(delay) => delay,
            Verdict::GiveUp { fast_exits } => panic!("gave up after {fast_exits}"),
        }
    }

    #[test]
    fn fast_exits_in_a_row_back_off_then_stop_the_suite() {
        let mut restarts = Restarts::default();
        let ms = |n| Duration::from_millis(n);
        // Never answered health, or only briefly: fast either way.
        assert_eq!(delay(restarts.exited(None)), ms(500));
        assert_eq!(delay(restarts.exited(Some(SECOND))), ms(1000));
        assert_eq!(delay(restarts.exited(None)), ms(2000));
        assert_eq!(delay(restarts.exited(Some(FAST_WITHIN - ms(1)))), ms(4000));
        assert_eq!(
            restarts.exited(None),
            Verdict::GiveUp {
                fast_exits: FAST_EXITS_ALLOWED
            }
        );
    }

    #[test]
    fn a_run_that_served_a_while_starts_the_fast_count_again() {
        let mut restarts = Restarts::default();
        for _ in 1..FAST_EXITS_ALLOWED {
            delay(restarts.exited(None));
        }
        // Served past FAST_WITHIN, not yet RESET_AFTER: the delay keeps
        // growing, but the fast exits before it no longer count.
        assert_eq!(delay(restarts.exited(Some(FAST_WITHIN))), 8 * SECOND);
        for _ in 1..FAST_EXITS_ALLOWED {
            delay(restarts.exited(None));
        }
        assert!(matches!(restarts.exited(None), Verdict::GiveUp { .. }));
    }

    #[test]
    fn a_service_that_keeps_crashing_after_serving_is_restarted_for_ever_at_the_cap() {
        let mut restarts = Restarts::default();
        let delays: Vec<Duration> = (0..10)
            .map(|_| delay(restarts.exited(Some(30 * SECOND))))
            .collect();
        assert_eq!(delays[..3], [FIRST_DELAY, 2 * FIRST_DELAY, 4 * FIRST_DELAY]);
        assert_eq!(delays[9], MAX_DELAY);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
    }

    #[test]
    fn a_stable_run_puts_the_delay_back_to_the_first() {
        let mut restarts = Restarts::default();
        for _ in 0..8 {
            delay(restarts.exited(Some(30 * SECOND)));
        }
        assert_eq!(delay(restarts.exited(Some(RESET_AFTER))), FIRST_DELAY);
        assert_eq!(delay(restarts.exited(None)), 2 * FIRST_DELAY);
    }
}
