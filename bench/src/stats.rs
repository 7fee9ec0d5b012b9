//! Latency samples and their percentiles.
use std::time::Duration;

/// One measured series: what was run, how, and how long each call took.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    /// The exact command (or API call) one sample is, for the report.
    pub command: String,
    pub samples: Vec<Duration>,
}

impl Series {
    pub fn new(label: impl Into<String>, command: impl Into<String>) -> Series {
        Series {
            label: label.into(),
            command: command.into(),
            samples: Vec::new(),
        }
    }

    pub fn summary(&self) -> Summary {
        Summary::of(&self.samples)
    }

    /// Samples in milliseconds, sorted: the plot's CDF.
    pub fn sorted_ms(&self) -> Vec<f64> {
        let mut ms: Vec<f64> = self.samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        ms
    }
}

/// Percentiles in milliseconds (nearest rank).
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let r = ((p / 100.0) * ms.len() as f64).ceil() as usize;
            ms[r.clamp(1, ms.len()) - 1]
        };
        Summary {
            n: ms.len(),
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
        }
    }
}

/// Milliseconds with the precision their size deserves.
pub fn ms(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.3} ms")
    } else if v < 100.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&samples);
        assert_eq!(s.n, 100);
        assert!((s.p50 - 50.0).abs() < 1e-9);
        assert!((s.p90 - 90.0).abs() < 1e-9);
        assert!((s.p99 - 99.0).abs() < 1e-9);
        assert!((s.mean - 50.5).abs() < 1e-9);
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let s = Summary::of(&[Duration::from_millis(7)]);
        assert!((s.p50 - 7.0).abs() < 1e-9 && (s.p99 - 7.0).abs() < 1e-9);
    }
}
