//! Delivery latency as a log-linear histogram: 16 buckets per power of two, so a
//! percentile is reported within 3 % of the true value, a counter row stays a few
//! dozen bytes, and histograms of any number of rows add up exactly (an average of
//! percentiles would not).

/// Bits of precision below the leading one: 16 buckets per doubling.
const SUB_BITS: u32 = 4;
const SUBS: u64 = 1 << SUB_BITS;

/// The bucket of a latency in milliseconds (exact below 16 ms).
fn index_of(ms: u64) -> u16 {
    if ms < SUBS {
        return ms as u16;
    }
    let exponent = 63 - ms.leading_zeros();
    let sub = (ms >> (exponent - SUB_BITS)) & (SUBS - 1);
    ((u64::from(exponent - SUB_BITS + 1) * SUBS) + sub) as u16
}

/// The smallest latency in bucket `index`, and the bucket's width.
fn bounds_of(index: u16) -> (u64, u64) {
    let index = u64::from(index);
    if index < SUBS {
        return (index, 1);
    }
    let shift = index / SUBS - 1;
    let sub = index % SUBS;
    ((SUBS + sub) << shift, 1 << shift)
}

/// Counts of latencies per bucket, in bucket order; only buckets that were hit are
/// kept (a sorted vector: counters are decoded, added and encoded on the writer
/// thread, and a tree map's allocations showed there).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latency(Vec<(u16, u64)>);

impl Latency {
    pub fn observe(&mut self, ms: u64) {
        self.count(index_of(ms), 1);
    }

    pub fn add(&mut self, other: &Latency) {
        for (index, count) in &other.0 {
            self.count(*index, *count);
        }
    }

    /// Takes `other`'s counts away, bucket by bucket, never below zero.
    pub fn subtract(&mut self, other: &Latency) {
        for (index, count) in &other.0 {
            if let Ok(at) = self.0.binary_search_by_key(index, |(i, _)| *i) {
                self.0[at].1 = self.0[at].1.saturating_sub(*count);
            }
        }
        self.0.retain(|(_, count)| *count > 0);
    }

    fn count(&mut self, index: u16, by: u64) {
        match self.0.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(at) => self.0[at].1 = self.0[at].1.saturating_add(by),
            Err(at) => self.0.insert(at, (index, by)),
        }
    }

    /// The latency at quantile `q` (0 < q ≤ 1), in milliseconds, as the middle of its
    /// bucket; `None` with no observations.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.0.iter().fold(0u64, |sum, (_, c)| sum.saturating_add(*c));
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (index, count) in &self.0 {
            seen = count.saturating_add(seen);
            if seen >= rank {
                let (low, width) = bounds_of(*index);
                return Some(low + (width - 1) / 2);
            }
        }
        None
    }

    /// The buckets that were hit, in order, for encoding.
    pub(super) fn buckets(&self) -> &[(u16, u64)] {
        &self.0
    }

    /// From buckets as [`Self::buckets`] gave them (in order: appended as they come;
    /// out of order: put in place).
    pub(super) fn from_buckets(buckets: impl IntoIterator<Item = (u16, u64)>) -> Self {
        let mut latency = Self::default();
        for (index, count) in buckets {
            match latency.0.last() {
                Some((last, _)) if *last >= index => latency.count(index, count),
                _ => latency.0.push((index, count)),
            }
        }
        latency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latency_falls_in_the_bucket_whose_bounds_hold_it() {
        for ms in (0..5_000).chain([u64::from(u32::MAX), u64::MAX / 3, u64::MAX]) {
            let (low, width) = bounds_of(index_of(ms));
            assert!(low <= ms && ms - low < width, "{ms}: {low}+{width}");
            assert!(width == 1 || width * SUBS <= low, "{ms}: bucket wider than 1/16");
        }
    }

    #[test]
    fn percentiles_come_from_the_merged_counts_within_three_percent() {
        let (mut fast, mut slow) = (Latency::default(), Latency::default());
        for ms in 1..=90 {
            fast.observe(ms);
        }
        for ms in [
            5_000, 6_000, 7_000, 8_000, 9_000, 10_000, 11_000, 12_000, 13_000, 60_000,
        ] {
            slow.observe(ms);
        }
        fast.add(&slow);
        assert_eq!(fast.quantile(0.5), Some(50));
        let p99 = fast.quantile(0.99).unwrap() as f64;
        assert!((p99 - 13_000.0).abs() / 13_000.0 < 0.03, "{p99}");
        let p90 = fast.quantile(0.90).unwrap() as f64;
        assert!((p90 - 90.0).abs() / 90.0 < 0.03, "{p90}");
        assert_eq!(Latency::default().quantile(0.5), None);
    }
}
