//! Histograms in Prometheus' shape, counted without allocation: latencies
//! in fixed buckets from 5 ms to two minutes ([`Histogram`]), and values in
//! buckets a convention advises ([`Spread`], the GenAI metrics). A leaf, so
//! that the upstream queue (its waits by lane) and the request metrics
//! count the same way.

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

/// Most bucket bounds a [`Spread`] takes.
const MAX_BOUNDS: usize = 16;

/// Values counted into buckets given by a convention's advice (at most 16
/// bounds, ascending).
#[derive(Debug, Clone)]
pub struct Spread {
    bounds: &'static [f64],
    /// Count per bucket (not cumulative); the one after the last bound is +Inf.
    buckets: [u64; MAX_BOUNDS + 1],
    sum: f64,
    count: u64,
}

impl Spread {
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.len() <= MAX_BOUNDS && bounds.is_sorted());
        Spread { bounds: &bounds[..bounds.len().min(MAX_BOUNDS)], buckets: [0; MAX_BOUNDS + 1], sum: 0.0, count: 0 }
    }

    /// Counts one value.
    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.iter().position(|b| v <= *b).unwrap_or(self.bounds.len());
        self.buckets[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// Adds another spread's counts (over the same bounds).
    pub fn merge(&mut self, o: &Spread) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
        self.sum += o.sum;
        self.count += o.count;
    }

    /// Writes the series `{name}_bucket`, `_sum` and `_count` with `labels`
    /// (`k="v",…`, never empty).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i];
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.buckets[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Count per bucket (not cumulative), the last one past every bound.
    pub fn buckets(&self) -> &[u64] {
        &self.buckets[..=self.bounds.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_counts_into_its_bounds_cumulatively() {
        static BOUNDS: [f64; 3] = [1.0, 4.0, 16.0];
        let mut s = Spread::new(&BOUNDS);
        for v in [1.0, 2.0, 4.0, 100.0] {
            s.observe(v);
        }
        let mut other = Spread::new(&BOUNDS);
        other.observe(0.5);
        s.merge(&other);
        let mut out = String::new();
        s.render(&mut out, "m", "a=\"b\"");
        assert_eq!(
            out,
            "m_bucket{a=\"b\",le=\"1\"} 2\nm_bucket{a=\"b\",le=\"4\"} 4\nm_bucket{a=\"b\",le=\"16\"} 4\n\
             m_bucket{a=\"b\",le=\"+Inf\"} 5\nm_sum{a=\"b\"} 107.5\nm_count{a=\"b\"} 5\n"
        );
    }
}
