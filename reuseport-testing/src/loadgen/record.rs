//! What a load recorded: every request, and a latency histogram of the answered ones.

use std::{collections::BTreeMap, time::Duration};

use hdrhistogram::Histogram;

/// One request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Its number in the load (0, 1, ...), which also chose its path.
    pub index: u64,
    /// When it was due (open loop) or started (closed loop), from the start of the load.
    pub at: Duration,
    /// The answering worker's pid, or why it failed.
    pub result: Result<u32, String>,
    /// Open loop: from the scheduled send time to the end of the response; closed loop: from
    /// connect (or send, on a kept connection) to the end of the response.
    pub latency: Duration,
}

/// Every request of one load, in completion order.
#[derive(Clone, Debug)]
pub struct Recording {
    pub samples: Vec<Sample>,
    /// Latency of the answered requests, in microseconds (3 significant digits).
    pub histogram: Histogram<u64>,
    /// From the start of the load to the last response.
    pub elapsed: Duration,
    /// The time limit stopped the load before all its requests were sent.
    pub cut_short: bool,
}

impl Recording {
    pub(crate) fn new() -> std::io::Result<Self> {
        // Auto-resizing from 1 µs up; 3 significant digits.
        let histogram = Histogram::new(3).map_err(std::io::Error::other)?;
        Ok(Self {
            samples: Vec::new(),
            histogram,
            elapsed: Duration::ZERO,
            cut_short: false,
        })
    }

    pub(crate) fn push(&mut self, sample: Sample) {
        if sample.result.is_ok() {
            let micros = sample.latency.as_micros().clamp(1, u128::from(u64::MAX)) as u64;
            // Auto-resizing: recording never fails for in-range values.
            let _ = self.histogram.record(micros);
        }
        self.samples.push(sample);
    }

    /// Answered requests per worker pid.
    pub fn per_worker(&self) -> BTreeMap<u32, u64> {
        let mut counts = BTreeMap::new();
        for s in &self.samples {
            if let Ok(pid) = s.result {
                *counts.entry(pid).or_insert(0) += 1;
            }
        }
        counts
    }

    pub fn answered(&self) -> u64 {
        self.samples.iter().filter(|s| s.result.is_ok()).count() as u64
    }

    pub fn failed(&self) -> u64 {
        self.samples.len() as u64 - self.answered()
    }

    pub fn first_error(&self) -> Option<&str> {
        self.samples
            .iter()
            .find_map(|s| s.result.as_ref().err())
            .map(String::as_str)
    }

    /// The latency at quantile `q` (0..=1) of the answered requests; zero when none was.
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.histogram.value_at_quantile(q))
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.histogram.max())
    }

    /// (latency, fraction of answered requests at most that slow), one point per distinct
    /// histogram bucket: the latency CDF, for plots.
    pub fn cdf(&self) -> Vec<(Duration, f64)> {
        let total = self.histogram.len();
        if total == 0 {
            return Vec::new();
        }
        let mut seen = 0u64;
        self.histogram
            .iter_recorded()
            .map(|v| {
                seen += v.count_at_value();
                (
                    Duration::from_micros(v.value_iterated_to()),
                    seen as f64 / total as f64,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(index: u64, result: Result<u32, String>, ms: u64) -> Sample {
        Sample {
            index,
            at: Duration::ZERO,
            result,
            latency: Duration::from_millis(ms),
        }
    }

    #[test]
    fn counts_workers_failures_and_quantiles() {
        let mut r = Recording::new().unwrap();
        for i in 0..99 {
            r.push(sample(i, Ok(10 + (i % 3) as u32), 1));
        }
        r.push(sample(99, Ok(10), 500));
        r.push(sample(100, Err("refused".into()), 9_000));
        assert_eq!(
            r.per_worker(),
            BTreeMap::from([(10, 34), (11, 33), (12, 33)])
        );
        assert_eq!((r.answered(), r.failed()), (100, 1));
        assert_eq!(r.first_error(), Some("refused"));
        let p50 = r.quantile(0.5).as_micros();
        assert!((999..=1001).contains(&p50), "{p50}");
        let max = r.max().as_millis();
        assert!((499..=500).contains(&max), "{max}");
        let cdf = r.cdf();
        assert_eq!(cdf.len(), 2);
        assert_eq!(cdf.last().map(|p| p.1), Some(1.0));
        assert!((cdf[0].1 - 0.99).abs() < 1e-9);
    }
}
