//! A latency histogram in Prometheus' shape: fixed buckets from 5 ms to two
//! minutes, counted without allocation. A leaf, so that the upstream queue
//! (its waits by lane) and the request metrics count the same way.

use std::fmt::Write;

/// Histogram bucket bounds, in seconds.
const BOUNDS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Durations counted into fixed buckets.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Count per bucket (not cumulative); the last one is +Inf.
    buckets: [u64; BOUNDS.len() + 1],
    sum_us: u64,
    count: u64,
}

impl Histogram {
    /// Counts one duration, in microseconds.
    pub fn observe(&mut self, us: u64) {
        let secs = us as f64 / 1e6;
        let i = BOUNDS.iter().position(|b| secs <= *b).unwrap_or(BOUNDS.len());
        self.buckets[i] += 1;
        self.sum_us += us;
        self.count += 1;
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
        self.sum_us += o.sum_us;
        self.count += o.count;
    }

    /// Writes the Prometheus series `{name}_bucket`, `_sum` and `_count`.
    pub fn render(&self, out: &mut String, name: &str) {
        self.render_labelled(out, name, "");
    }

    /// [`Self::render`] with `labels` (`k="v",…`, or empty) on each series.
    pub fn render_labelled(&self, out: &mut String, name: &str, labels: &str) {
        let (open, sep) = if labels.is_empty() { ("", "") } else { ("{", ",") };
        let close = if labels.is_empty() { "" } else { "}" };
        let mut cumulative = 0;
        for (i, b) in BOUNDS.iter().enumerate() {
            cumulative += self.buckets[i];
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.buckets[BOUNDS.len()];
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum{open}{labels}{close} {}", self.sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{open}{labels}{close} {}", self.count);
    }

    /// Durations counted.
    pub fn count(&self) -> u64 {
        self.count
    }
}
