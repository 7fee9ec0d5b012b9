//! The operator's ceilings on what a function may ask in its ol.yaml
//! `limits:`. Defined once for the two services that enforce them: the
//! registry refuses a push that asks for more ([`Ceilings::check`]), and
//! sandboxd lowers whatever reaches it to the ceilings ([`Ceilings::cap`]),
//! so a spec that bypassed the registry (or one pushed before the operator
//! lowered a ceiling) still cannot take more.
use serde::{Deserialize, Serialize};
use sock_proto::v1::Limits;

/// Config keys of both services (flattened into their `Config`), with the
/// same defaults everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ceilings {
    pub max_memory_mb: u64,
    pub max_pids: u32,
    pub max_timeout_ms: u32,
    /// In percent of one CPU, as `limits.cpu_percent` (100 = one CPU).
    pub max_cpu_percent: u32,
}

impl Default for Ceilings {
    fn default() -> Self {
        Ceilings {
            max_memory_mb: 1024,
            max_pids: 256,
            max_timeout_ms: 300_000,
            max_cpu_percent: 100,
        }
    }
}

/// A limit a function asked for above the operator's ceiling.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "ol.yaml asks for limits.{limit} = {asked}, over this platform's ceiling of {ceiling} (max_{limit})"
)]
pub struct OverCeiling {
    /// The ol.yaml key; the config key is `max_` + this.
    pub limit: &'static str,
    pub asked: u64,
    pub ceiling: u64,
}

impl Ceilings {
    /// Ok when every limit in `limits` is within its ceiling; otherwise the
    /// first one over. Zero ("the node's default") is always within.
    pub fn check(&self, limits: &Limits) -> Result<(), OverCeiling> {
        for (limit, asked, ceiling) in self.pairs(limits) {
            if asked > ceiling {
                return Err(OverCeiling {
                    limit,
                    asked,
                    ceiling,
                });
            }
        }
        Ok(())
    }

    /// `limits` with each value above its ceiling lowered to the ceiling.
    /// Zero stays zero: the caller fills in its default first and caps
    /// after, so a default is capped too.
    pub fn cap(&self, limits: Limits) -> Limits {
        Limits {
            memory_mb: limits.memory_mb.min(self.max_memory_mb),
            pids: limits.pids.min(self.max_pids),
            cpu_percent: limits.cpu_percent.min(self.max_cpu_percent),
            timeout_ms: limits.timeout_ms.min(self.max_timeout_ms),
        }
    }

    /// Each limit's ol.yaml key, asked value and ceiling.
    fn pairs(&self, limits: &Limits) -> [(&'static str, u64, u64); 4] {
        [
            ("memory_mb", limits.memory_mb, self.max_memory_mb),
            ("pids", limits.pids.into(), self.max_pids.into()),
            (
                "timeout_ms",
                limits.timeout_ms.into(),
                self.max_timeout_ms.into(),
            ),
            (
                "cpu_percent",
                limits.cpu_percent.into(),
                self.max_cpu_percent.into(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceilings() -> Ceilings {
        Ceilings {
            max_memory_mb: 512,
            max_pids: 64,
            max_timeout_ms: 10_000,
            max_cpu_percent: 200,
        }
    }

    #[test]
    fn limits_at_or_below_the_ceilings_pass() {
        let at = Limits {
            memory_mb: 512,
            pids: 64,
            cpu_percent: 200,
            timeout_ms: 10_000,
        };
        assert_eq!(ceilings().check(&at), Ok(()));
        assert_eq!(ceilings().check(&Limits::default()), Ok(()));
    }

    #[test]
    fn a_limit_over_its_ceiling_is_named_with_the_config_key() {
        let over = |limits: Limits| {
            ceilings()
                .check(&limits)
                .expect_err("over a ceiling")
                .to_string()
        };
        assert_eq!(
            over(Limits {
                memory_mb: 1024,
                ..Limits::default()
            }),
            "ol.yaml asks for limits.memory_mb = 1024, over this platform's ceiling of 512 (max_memory_mb)"
        );
        assert!(
            over(Limits {
                pids: 100_000,
                ..Limits::default()
            })
            .contains("limits.pids = 100000, over this platform's ceiling of 64 (max_pids)")
        );
        assert!(
            over(Limits {
                timeout_ms: 10_001,
                ..Limits::default()
            })
            .ends_with("ceiling of 10000 (max_timeout_ms)")
        );
        assert!(
            over(Limits {
                cpu_percent: 400,
                ..Limits::default()
            })
            .ends_with("ceiling of 200 (max_cpu_percent)")
        );
    }

    #[test]
    fn cap_lowers_only_what_is_over() {
        let asked = Limits {
            memory_mb: 4096,
            pids: 16,
            cpu_percent: 400,
            timeout_ms: 0,
        };
        assert_eq!(
            ceilings().cap(asked),
            Limits {
                memory_mb: 512,
                pids: 16,
                cpu_percent: 200,
                timeout_ms: 0,
            }
        );
    }

    #[test]
    fn a_flattened_ceiling_loads_from_the_config_file() {
        #[derive(Debug, Default, Serialize, Deserialize)]
        #[serde(default)]
        struct Config {
            name: String,
            #[serde(flatten)]
            ceilings: Ceilings,
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sock.toml");
        std::fs::write(&path, "[svc]\nname = \"x\"\nmax_pids = 12\n").expect("write config");
        let config: Config = crate::load_config("svc", Some(&path)).expect("load");
        assert_eq!(config.ceilings.max_pids, 12);
        assert_eq!(config.ceilings.max_memory_mb, 1024);
    }
}
