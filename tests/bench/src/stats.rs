//! Latency samples and their percentiles; number formatting.

use std::time::Duration;

/// Latency samples in nanoseconds, sorted.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    sorted: Vec<u64>,
}

impl Latencies {
    pub fn new(mut samples: Vec<u64>) -> Self {
        samples.sort_unstable();
        Latencies { sorted: samples }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// The nearest-rank percentile `p` (0 < p <= 100); zero without samples.
    pub fn pct(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let n = self.sorted.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        Duration::from_nanos(self.sorted[rank.clamp(1, n) - 1])
    }
}

/// The median of some durations.
pub fn median(mut v: Vec<Duration>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

/// A latency, scaled for reading: `85.3 µs`, `1.24 ms`.
pub fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// A rate with thousands separators: `41,234/s`.
pub fn fmt_rate(r: f64) -> String {
    let n = r.round() as u64;
    let digits = n.to_string();
    let (head, rest) = digits.split_at(digits.len() % 3);
    let mut groups: Vec<&str> = Vec::new();
    if !head.is_empty() {
        groups.push(head);
    }
    groups.extend(
        rest.as_bytes()
            .chunks(3)
            .filter_map(|g| std::str::from_utf8(g).ok()),
    );
    format!("{}/s", groups.join(","))
}

/// Bytes as decimal megabytes: `12.3 MB`.
pub fn fmt_mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let l = Latencies::new((1..=100).rev().collect());
        assert_eq!(l.pct(50.0), Duration::from_nanos(50));
        assert_eq!(l.pct(99.0), Duration::from_nanos(99));
        assert_eq!(l.pct(100.0), Duration::from_nanos(100));
        assert_eq!(Latencies::default().pct(50.0), Duration::ZERO);
    }

    #[test]
    fn medians_and_formats() {
        let ms = Duration::from_millis;
        assert_eq!(median(vec![ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(
            median(vec![ms(4), ms(1), ms(2), ms(3)]),
            Duration::from_micros(2500)
        );
        assert_eq!(fmt_rate(1234567.4), "1,234,567/s");
        assert_eq!(fmt_rate(999.0), "999/s");
        assert_eq!(fmt_dur(Duration::from_micros(85)), "85.0 µs");
        assert_eq!(fmt_dur(Duration::from_micros(1240)), "1.24 ms");
    }
}
