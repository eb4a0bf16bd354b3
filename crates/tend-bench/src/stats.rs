//! Median, p99 and friends of a set of samples.

use serde::Serialize;

/// Summary of samples, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median (mean of the two middle samples for an even count).
    pub median_us: f64,
    /// 99th percentile, nearest rank: the smallest sample at least 99 % of
    /// all samples are less than or equal to.
    pub p99_us: f64,
    /// Smallest sample.
    pub min_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

/// Summarises samples given in nanoseconds; `None` for no samples.
pub fn summarize(samples_ns: &[i64]) -> Option<Summary> {
    if samples_ns.is_empty() {
        return None;
    }
    let mut sorted = samples_ns.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    let us = |ns: i64| ns as f64 / 1e3;
    let median = if n % 2 == 1 {
        us(sorted[n / 2])
    } else {
        (us(sorted[n / 2 - 1]) + us(sorted[n / 2])) / 2.0
    };
    let rank = (0.99 * n as f64).ceil() as usize;
    Some(Summary {
        n,
        median_us: median,
        p99_us: us(sorted[rank.clamp(1, n) - 1]),
        min_us: us(sorted[0]),
        max_us: us(sorted[n - 1]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p99() {
        assert_eq!(summarize(&[]), None);
        let one = summarize(&[5_000]).unwrap();
        assert_eq!((one.median_us, one.p99_us), (5.0, 5.0));
        let even = summarize(&[4_000, 1_000, 3_000, 2_000]).unwrap();
        assert_eq!(even.median_us, 2.5);
        assert_eq!(even.p99_us, 4.0);
        let hundred: Vec<i64> = (1..=100).map(|i| i * 1_000).collect();
        let s = summarize(&hundred).unwrap();
        assert_eq!(
            (s.median_us, s.p99_us, s.min_us, s.max_us),
            (50.5, 99.0, 1.0, 100.0)
        );
    }
}
