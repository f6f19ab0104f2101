//! A log-linear latency histogram in the HDR style: values (nanoseconds) below 2^SUB_BITS are
//! counted exactly; above, every power of two is split into 2^SUB_BITS equal sub-buckets, so a
//! recorded value is known to within 1/2^SUB_BITS (0.8 % with 7 bits). Fixed size, no allocation
//! after `new`, `record` is a few instructions.

const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
/// Buckets: exact values 0..SUB, then (64 - SUB_BITS) magnitudes of SUB/2 .. SUB sub-buckets.
/// Index layout: magnitude m (value's top bit at position SUB_BITS - 1 + m) uses slots
/// [SUB + (m-1)*SUB/2, SUB + m*SUB/2) for m >= 1; keeps it simple and dense.
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize + 1) * (SUB / 2);

#[derive(Clone)]
pub(crate) struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Histogram(n={}, min={}, max={})", self.total, self.min, self.max)
    }
}

#[inline]
fn index(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    // Position of the top bit; >= SUB_BITS here.
    let top = 63 - v.leading_zeros();
    let m = (top - (SUB_BITS - 1)) as usize; // >= 1
    let shift = top - (SUB_BITS - 1);
    // v >> shift is in [SUB/2, SUB): the top SUB_BITS bits.
    let sub = (v >> shift) as usize - SUB / 2;
    SUB + (m - 1) * (SUB / 2) + sub
}

/// The lowest and highest value a bucket holds.
fn bounds(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, i as u64);
    }
    let j = i - SUB;
    let m = j / (SUB / 2) + 1;
    let sub = (j % (SUB / 2) + SUB / 2) as u64;
    let shift = (m - 1 + 1) as u32; // top = SUB_BITS - 1 + m, shift = m
    let lo = sub << shift;
    (lo, lo | ((1u64 << shift) - 1))
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    #[inline]
    pub(crate) fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    pub(crate) fn clear(&mut self) {
        self.counts.fill(0);
        self.total = 0;
        self.min = u64::MAX;
        self.max = 0;
        self.sum = 0;
    }

    pub(crate) fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        self.total += o.total;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
    }

    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    pub(crate) fn min(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.min
        }
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    pub(crate) fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1): the upper bound of the bucket holding the
    /// ceil(q * n)-th smallest value, clamped to the exact max (HDR convention).
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bounds(i).1.min(self.max).max(self.min);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_bounds_roundtrip() {
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 20, (1 << 40) + 12345, u64::MAX / 3, u64::MAX]) {
            let i = index(v);
            assert!(i < BUCKETS, "{v}");
            let (lo, hi) = bounds(i);
            assert!(lo <= v && v <= hi, "{v}: {lo}..{hi}");
            if v < 100_000 {
                assert!(i >= last);
                last = i;
            }
            // Relative precision.
            assert!((hi - lo) as f64 <= (v as f64) / 63.0 + 1.0);
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 5_000_000.0).abs() / 5_000_000.0 < 0.01, "{p50}");
        assert_eq!(h.quantile(1.0), 10_000_000);
        assert_eq!(h.min(), 1000);
    }
}
