//! The part of PEP 440 the cache needs: versions, their order, and
//! whether one satisfies a specifier (`>=1.0`, `~=2.2`, `==2.1.*`); and
//! PEP 503 project names. Requirements and markers both build on it.
use std::cmp::Ordering;
use std::fmt;
use std::sync::OnceLock;

use regex::Regex;

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Specifier {
    pub op: Op,
    pub version: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
    Compatible,
    Arbitrary,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Equal => "==",
            Op::NotEqual => "!=",
            Op::Less => "<",
            Op::LessEqual => "<=",
            Op::Greater => ">",
            Op::GreaterEqual => ">=",
            Op::Compatible => "~=",
            Op::Arbitrary => "===",
        }
    }

    /// Longest first, so `<=` is not read as `<`.
    const ALL: [Op; 8] = [
        Op::Arbitrary,
        Op::Equal,
        Op::NotEqual,
        Op::LessEqual,
        Op::GreaterEqual,
        Op::Compatible,
        Op::Less,
        Op::Greater,
    ];
}

impl Op {
    pub(crate) fn from_symbol(text: &str) -> Option<Op> {
        Some(match text {
            "==" => Op::Equal,
            "!=" => Op::NotEqual,
            "<" => Op::Less,
            "<=" => Op::LessEqual,
            ">" => Op::Greater,
            ">=" => Op::GreaterEqual,
            "~=" => Op::Compatible,
            "===" => Op::Arbitrary,
            _ => return None,
        })
    }
}

/// PEP 503 normalisation: `Zope.Interface` and `zope_interface` are one
/// project.
pub(crate) fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_separator = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_separator {
                out.push('-');
            }
            in_separator = true;
        } else {
            out.push(c.to_ascii_lowercase());
            in_separator = false;
        }
    }
    out
}

impl Specifier {
    pub(crate) fn parse(text: &str) -> Result<Specifier, String> {
        let op = Op::ALL
            .into_iter()
            .find(|op| text.starts_with(op.as_str()))
            .ok_or_else(|| format!("'{text}' is not a version specifier such as '>=1.0'"))?;
        let version = text[op.as_str().len()..].trim();
        let plausible = |c: char| c.is_ascii_alphanumeric() || ".*+!_-".contains(c);
        if version.is_empty() || !version.chars().all(plausible) {
            return Err(format!(
                "'{text}' is not a version specifier such as '>=1.0'"
            ));
        }
        Ok(Specifier {
            op,
            version: version.to_string(),
        })
    }

    pub(crate) fn allows(&self, candidate: &str) -> bool {
        if self.op == Op::Arbitrary {
            return candidate.eq_ignore_ascii_case(&self.version);
        }
        let Some(have) = Version::parse(candidate) else {
            return false;
        };
        if let Some(prefix) = self.version.strip_suffix(".*") {
            let Some(prefix) = Version::parse(prefix) else {
                return false;
            };
            let matches = have.epoch == prefix.epoch
                && (0..prefix.release.len()).all(|i| have.segment(i) == prefix.segment(i));
            return match self.op {
                Op::Equal => matches,
                Op::NotEqual => !matches,
                _ => false,
            };
        }
        let Some(want) = Version::parse(&self.version) else {
            return false;
        };
        let ord = have.cmp(&want);
        match self.op {
            Op::Equal => ord == Ordering::Equal,
            Op::NotEqual => ord != Ordering::Equal,
            Op::Less => ord == Ordering::Less,
            Op::LessEqual => ord != Ordering::Greater,
            Op::Greater => ord == Ordering::Greater,
            Op::GreaterEqual => ord != Ordering::Less,
            Op::Compatible => {
                let keep = want.release.len().saturating_sub(1).max(1);
                ord != Ordering::Less
                    && have.epoch == want.epoch
                    && (0..keep).all(|i| have.segment(i) == want.segment(i))
            }
            Op::Arbitrary => unreachable!("handled above"),
        }
    }
}

impl fmt::Display for Specifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.op.as_str(), self.version)
    }
}

/// A PEP 440 version, compared as the PEP orders them; the local part
/// (`+cpu`) is ignored.
#[derive(Clone, Debug)]
pub(crate) struct Version {
    epoch: u64,
    release: Vec<u64>,
    /// (0 = a, 1 = b, 2 = rc, number)
    pre: Option<(u8, u64)>,
    post: Option<u64>,
    dev: Option<u64>,
}

impl Version {
    pub(crate) fn parse(text: &str) -> Option<Version> {
        static RE: OnceLock<Regex> = OnceLock::new();
        let re = RE.get_or_init(|| {
            Regex::new(
                r"^v?(?:(\d+)!)?(\d+(?:\.\d+)*)(?:[-_.]?(a|b|c|rc|alpha|beta|pre|preview)[-_.]?(\d+)?)?(?:-(\d+)|[-_.]?(post|rev|r)[-_.]?(\d+)?)?(?:[-_.]?(dev)[-_.]?(\d+)?)?(?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?$",
            )
            .expect("the PEP 440 pattern compiles")
        });
        let lower = text.trim().to_ascii_lowercase();
        let caps = re.captures(&lower)?;
        let num = |i: usize| caps.get(i).and_then(|m| m.as_str().parse::<u64>().ok());
        let release = caps
            .get(2)?
            .as_str()
            .split('.')
            .map(|s| s.parse().ok())
            .collect::<Option<Vec<u64>>>()?;
        let pre = caps.get(3).map(|kind| {
            let kind = match kind.as_str() {
                "a" | "alpha" => 0,
                "b" | "beta" => 1,
                _ => 2,
            };
            (kind, num(4).unwrap_or(0))
        });
        let post = num(5).or_else(|| caps.get(6).map(|_| num(7).unwrap_or(0)));
        Some(Version {
            epoch: num(1).unwrap_or(0),
            release,
            pre,
            post,
            dev: caps.get(8).map(|_| num(9).unwrap_or(0)),
        })
    }

    fn segment(&self, i: usize) -> u64 {
        self.release.get(i).copied().unwrap_or(0)
    }

    /// Sort key of the suffixes: `1.0.dev0 < 1.0a1 < 1.0 < 1.0.post1`.
    fn suffix_key(&self) -> (i128, i128, i128, i128) {
        const LOW: i128 = i128::MIN;
        const HIGH: i128 = i128::MAX;
        let (pre_kind, pre_num) = match (self.pre, self.post, self.dev) {
            (Some((kind, n)), _, _) => (i128::from(kind), i128::from(n)),
            (None, None, Some(_)) => (LOW, 0),
            _ => (HIGH, 0),
        };
        let post = self.post.map_or(LOW, i128::from);
        let dev = self.dev.map_or(HIGH, i128::from);
        (pre_kind, pre_num, post, dev)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.release.len().max(other.release.len());
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| {
                (0..len)
                    .map(|i| self.segment(i).cmp(&other.segment(i)))
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            })
            .then_with(|| self.suffix_key().cmp(&other.suffix_key()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised() {
        assert_eq!(normalize_name("Zope.Interface"), "zope-interface");
        assert_eq!(normalize_name("typing__extensions"), "typing-extensions");
    }

    #[test]
    fn versions_order_as_pep_440_says() {
        let order = [
            "1.0.dev0",
            "1.0a1",
            "1.0b2",
            "1.0rc1",
            "1.0",
            "1.0.post1",
            "1.1",
            "2!0.1",
        ];
        for pair in order.windows(2) {
            let (a, b) = (
                Version::parse(pair[0]).expect("valid"),
                Version::parse(pair[1]).expect("valid"),
            );
            assert!(a < b, "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(
            Version::parse("1.0").expect("valid"),
            Version::parse("1.0.0+local").expect("valid")
        );
        assert!(Version::parse("not a version").is_none());
    }
}
