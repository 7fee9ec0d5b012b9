//! How long one call may take.
use std::time::Duration;

use tonic::metadata::MetadataMap;

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
