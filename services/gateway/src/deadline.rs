//! How long one call may take: worked out once, when the call's function
//! is known, and carried from there to the node as one [`Deadline`].
use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use crate::error::Error;

/// Time the sandboxd call gets beyond the call's budget. sandboxd enforces
/// the budget on the function and reports a timeout as the function's
/// error; the gateway gives up only if sandboxd itself does not answer.
const SANDBOXD_GRACE: Duration = Duration::from_millis(500);

/// One call's deadline: its budget, counted from when it started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    pub fn new(start: Instant, budget: Duration) -> Self {
        Deadline {
            at: start + budget,
            budget,
        }
    }

    /// When the call's budget runs out.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// What is left for the function, in sandboxd's whole milliseconds
    /// (rounded up: a call that did not wait keeps its whole budget), or
    /// the call's timeout once nothing is.
    pub fn left_ms(&self, function: &str) -> Result<u32, Error> {
        let left = self.at.saturating_duration_since(Instant::now());
        match u32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u32::MAX) {
            0 => Err(self.exceeded(function)),
            ms => Ok(ms),
        }
    }

    /// The gRPC deadline of the call to sandboxd: what is left and a
    /// grace. The gateway stops waiting then, and the node stops working
    /// on the call.
    pub fn left_at_node(&self) -> Duration {
        (self.at + SANDBOXD_GRACE).saturating_duration_since(Instant::now())
    }

    /// The error of a call whose budget ran out before it was answered.
    pub fn exceeded(&self, function: &str) -> Error {
        Error::DeadlineExceeded {
            function: function.to_string(),
            budget_ms: self.budget.as_millis().try_into().unwrap_or(u64::MAX),
        }
    }
}

/// The caller's gRPC deadline, from the `grpc-timeout` header (an integer
/// of at most 8 digits and a unit: H, M, S, m, u or n). A malformed header
/// counts as no deadline, as tonic's server treats it.
pub(crate) fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let unit_at = value.len().checked_sub(1)?;
    let (amount, unit) = value.split_at_checked(unit_at)?;
    if amount.is_empty() || amount.len() > 8 {
        return None;
    }
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The budget of a call: the shortest of what the caller asked for
/// (`timeout_ms`), what is left of its gRPC deadline, and the function's
/// own limit (`limit_ms`, 0 = the platform's `default_ms`).
pub(crate) fn budget(
    requested_ms: Option<u32>,
    deadline_left: Option<Duration>,
    limit_ms: u32,
    default_ms: u32,
) -> Duration {
    let limit = match limit_ms {
        0 => default_ms,
        ms => ms,
    };
    [
        Some(Duration::from_millis(limit.into())),
        requested_ms.map(|ms| Duration::from_millis(ms.into())),
        deadline_left,
    ]
    .into_iter()
    .flatten()
    .min()
    .expect("the function's limit is always there")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(header: &str) -> Option<Duration> {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", header.parse().expect("ascii"));
        grpc_timeout(&metadata)
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(timeout_of("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout_of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout_of("4S"), Some(Duration::from_secs(4)));
        assert_eq!(timeout_of("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(timeout_of("7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout_of("9n"), Some(Duration::from_nanos(9)));
    }

    #[test]
    fn malformed_grpc_timeouts_are_ignored() {
        for bad in ["", "S", "12", "123456789S", "5x", "-5S", "5 S"] {
            assert_eq!(timeout_of(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_left_is_counted_from_the_start_and_rounded_up() {
        let deadline = Deadline::new(Instant::now(), Duration::from_millis(1_000));
        assert_eq!(deadline.left_ms("f").expect("left"), 1_000);
        tokio::time::advance(Duration::from_micros(400_100)).await;
        assert_eq!(deadline.left_ms("f").expect("left"), 600, "599.9 ms");
        assert_eq!(deadline.left_at_node(), Duration::from_micros(1_099_900));
        tokio::time::advance(Duration::from_micros(599_900)).await;
        let Err(Error::DeadlineExceeded {
            function,
            budget_ms,
        }) = deadline.left_ms("f")
        else {
            panic!("nothing is left");
        };
        assert_eq!((function.as_str(), budget_ms), ("f", 1_000));
        assert_eq!(deadline.left_at_node(), SANDBOXD_GRACE, "the node's grace");
    }

    #[test]
    fn budget_is_the_shortest_bound() {
        let ms = Duration::from_millis;
        assert_eq!(
            budget(None, None, 0, 30_000),
            ms(30_000),
            "platform default"
        );
        assert_eq!(
            budget(None, None, 1_000, 30_000),
            ms(1_000),
            "function limit"
        );
        assert_eq!(
            budget(Some(200), None, 1_000, 30_000),
            ms(200),
            "caller asks less"
        );
        assert_eq!(
            budget(Some(5_000), None, 1_000, 30_000),
            ms(1_000),
            "capped by the limit"
        );
        assert_eq!(
            budget(Some(5_000), Some(ms(700)), 0, 30_000),
            ms(700),
            "gRPC deadline"
        );
    }
}
