//! Function names. They appear in URLs, sled keys, directory names and
//! cgroup names, so they are kept to a small, boring alphabet: OpenLambda's
//! (letters of both cases, digits, `-`, `_`) without its `.`, which could
//! make a path (`..`). Names are case-sensitive: `L0` and `l0` are two
//! functions (Linux file names are too).
//!
//! [`validate_name`] (`[A-Za-z0-9][A-Za-z0-9_-]{0,62}`) is the one check:
//! the gateway, the registry and the cache all call it.
use crate::error::{BundleError, shown};

const MAX_LEN: usize = 63;

/// Checks a function name: `[A-Za-z0-9][A-Za-z0-9_-]{0,62}`.
pub fn validate_name(name: &str) -> Result<(), BundleError> {
    let invalid = |reason| {
        Err(BundleError::InvalidName {
            name: shown(name),
            reason,
        })
    };
    let Some(first) = name.bytes().next() else {
        return invalid("it is empty");
    };
    if name.len() > MAX_LEN {
        return invalid("it is longer than 63 characters");
    }
    if !(first.is_ascii_alphanumeric()) {
        return invalid("it must start with a letter or a digit");
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if !name.bytes().all(allowed) {
        return invalid("use only letters, digits, '-' and '_'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for name in ["f", "0", "L0", "Hello-World_2", &"a".repeat(63)] {
            validate_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn refuses_everything_else_with_a_reason() {
        for (name, reason) in [
            ("", "empty"),
            ("-x", "must start"),
            ("_x", "must start"),
            ("hello World", "only letters"),
            ("a/b", "only letters"),
            ("a.b", "only letters"),
            ("a\r\nx-evil: 1", "only letters"),
            ("..", "must start"),
            ("é", "must start"),
            (&"a".repeat(64), "longer than 63"),
        ] {
            let err = validate_name(name).expect_err(name).to_string();
            assert!(err.starts_with("invalid function name"), "{err}");
            assert!(err.contains(reason), "{name}: {err}");
        }
    }
}
