//! What each connection worker records, merged at the end, and the percentiles of the
//! summary. Samples are kept whole (a few bytes per message) and sorted once: exact
//! percentiles, no histogram to tune.

use std::collections::BTreeMap;

/// One worker's records; [`Stats::merge`] joins them.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages accepted (final 250 after DATA).
    pub messages: u64,
    /// Failures, by reply code or kind (`"550"`, `"timeout"`, …).
    pub errors: BTreeMap<String, u64>,
    /// MAIL FROM to the final 250, per accepted message, in milliseconds.
    pub latency_ms: Vec<f64>,
    /// TCP connect through EHLO (and STARTTLS, AUTH), per session set up, in milliseconds.
    pub connect_ms: Vec<f64>,
}

impl Stats {
    pub fn error(&mut self, key: String) {
        *self.errors.entry(key).or_default() += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, other: Stats) {
        self.messages += other.messages;
        for (key, n) in other.errors {
            *self.errors.entry(key).or_default() += n;
        }
        self.latency_ms.extend(other.latency_ms);
        self.connect_ms.extend(other.connect_ms);
    }
}

/// Sorts samples for [`percentile`] (NaN never occurs: they are durations).
pub fn sort(samples: &mut [f64]) {
    samples.sort_by(f64::total_cmp);
}

/// The nearest-rank percentile `p` (0–100) of sorted samples: the smallest sample that at
/// least `p` % of the samples do not exceed. `None` without samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_a_hundred() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50.0));
        assert_eq!(percentile(&samples, 90.0), Some(90.0));
        assert_eq!(percentile(&samples, 99.0), Some(99.0));
        assert_eq!(percentile(&samples, 99.9), Some(100.0));
        assert_eq!(percentile(&samples, 100.0), Some(100.0));
        assert_eq!(percentile(&samples, 0.0), Some(1.0));
    }

    #[test]
    fn percentiles_of_few_samples() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 0.0), Some(7.0));
        assert_eq!(percentile(&[7.0], 99.9), Some(7.0));
        let mut samples = vec![3.0, 1.0, 2.0, 4.0];
        sort(&mut samples);
        assert_eq!(percentile(&samples, 50.0), Some(2.0));
        assert_eq!(percentile(&samples, 51.0), Some(3.0));
        assert_eq!(percentile(&samples, 99.0), Some(4.0));
    }

    #[test]
    fn merges_workers() {
        let mut a = Stats {
            messages: 2,
            ..Stats::default()
        };
        a.error("550".to_string());
        let mut b = Stats {
            messages: 3,
            ..Stats::default()
        };
        b.error("550".to_string());
        b.error("timeout".to_string());
        b.latency_ms.push(1.0);
        a.merge(b);
        assert_eq!(a.messages, 5);
        assert_eq!(a.error_count(), 3);
        assert_eq!(a.errors["550"], 2);
        assert_eq!(a.latency_ms, [1.0]);
    }
}
