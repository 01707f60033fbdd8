//! Piecewise-linear readings of the profile's measured curves.

use plans::BandwidthCurve;

/// GEMM time against rows `m` at one `(n, k)` shape, in seconds.
///
/// A point `(m_i, tflops_i)` fixes `tau_i = 2 * m_i * n * k / (tflops_i * 1e12)` s.
/// Time is linear in `m` between points, through the origin below the first
/// point, and at the last point's throughput beyond the last, so it is
/// piecewise-linear in `m` with breakpoints at the measured `m_i`.
#[derive(Clone, Debug)]
pub(crate) struct RowsCurve {
    /// `(m_i, tau_i)`: rows and seconds, sorted by rows, rows > 0.
    pts: Vec<(f64, f64)>,
    /// Seconds per row beyond the last point: `2 * n * k / (tflops_last * 1e12)`.
    tail_s_per_row: f64,
    /// The least a GEMM of any rows takes, s (its weights' read time; 0: none).
    floor: f64,
}

impl RowsCurve {
    /// From `GemmCurve::rows_curve` points at shape `(n, k)`; `None` when empty.
    pub(crate) fn new(points: &[(u64, f64)], n: usize, k: usize) -> Option<Self> {
        let flops_per_row = 2.0 * n as f64 * k as f64;
        let pts: Vec<(f64, f64)> = points
            .iter()
            .filter(|(m, t)| *m > 0 && t.is_finite() && *t > 0.0)
            .map(|&(m, tflops)| (m as f64, m as f64 * flops_per_row / (tflops * 1e12)))
            .collect();
        let &(_, last_tflops) = points
            .iter()
            .rev()
            .find(|(m, t)| *m > 0 && t.is_finite() && *t > 0.0)?;
        if pts.is_empty() {
            return None;
        }
        Some(RowsCurve {
            pts,
            tail_s_per_row: flops_per_row / (last_tflops * 1e12),
            floor: 0.0,
        })
    }

    /// The same curve, never below `floor` seconds for any rows: a GEMM reads
    /// its whole weight matrix however few rows it multiplies.
    pub(crate) fn with_floor(mut self, floor: f64) -> Self {
        self.floor = floor.max(0.0);
        self
    }

    /// The measured curve alone (no floor).
    fn measured(&self, m: f64) -> f64 {
        let (m0, t0) = self.pts[0];
        if m <= m0 {
            return t0 * m / m0;
        }
        let i = self.pts.partition_point(|&(mi, _)| mi < m);
        match self.pts.get(i) {
            Some(&(m1, t1)) => {
                let (ma, ta) = self.pts[i - 1];
                ta + (t1 - ta) * (m - ma) / (m1 - ma)
            }
            None => {
                let (ml, tl) = self.pts[self.pts.len() - 1];
                tl + (m - ml) * self.tail_s_per_row
            }
        }
    }

    /// The rows where the measured curve reaches the floor (0: no floor).
    fn floor_rows(&self) -> f64 {
        if self.floor <= 0.0 {
            return 0.0;
        }
        let mut prev = (0.0, 0.0);
        for &(m, t) in &self.pts {
            if t >= self.floor {
                let (ma, ta) = prev;
                return ma + (self.floor - ta) * (m - ma) / (t - ta);
            }
            prev = (m, t);
        }
        let (ml, tl) = prev;
        ml + (self.floor - tl) / self.tail_s_per_row
    }

    /// [`RowsCurve::seconds`] extended linearly to `m = 0`: the floor
    /// there too (the LP's linear extension, like a chunk's launches).
    pub(crate) fn seconds_from_zero(&self, m: f64) -> f64 {
        self.measured(m.max(0.0)).max(self.floor)
    }

    /// Seconds for a GEMM of `m` rows (`m` may be fractional; 0 or less costs 0).
    pub(crate) fn seconds(&self, m: f64) -> f64 {
        if m <= 0.0 {
            return 0.0;
        }
        self.measured(m).max(self.floor)
    }

    /// The measured row counts and where the floor ends, where the time's
    /// slope may change.
    pub(crate) fn breakpoints(&self) -> impl Iterator<Item = f64> + '_ {
        let floor = self.floor_rows();
        self.pts
            .iter()
            .map(|p| p.0)
            .chain((floor > 0.0).then_some(floor))
    }
}

/// The transfer sizes (bytes) where a bandwidth curve's time changes slope.
pub(crate) fn link_breakpoints(curve: &BandwidthCurve) -> impl Iterator<Item = f64> + '_ {
    curve.points.iter().map(|p| p.bytes as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_curve_interpolates_time() {
        // 1 TFLOP/s at m = 10, 2 TFLOP/s at m = 30, n = k = 1000: 2e6 FLOP per row.
        let c = RowsCurve::new(&[(10, 1.0), (30, 2.0)], 1000, 1000).unwrap();
        let t10 = 10.0 * 2e6 / 1e12;
        let t30 = 30.0 * 2e6 / 2e12;
        assert!((c.seconds(5.0) - t10 / 2.0).abs() < 1e-18);
        assert!((c.seconds(20.0) - (t10 + t30) / 2.0).abs() < 1e-18);
        assert!((c.seconds(40.0) - (t30 + 10.0 * 2e6 / 2e12)).abs() < 1e-18);
        assert_eq!(c.seconds(0.0), 0.0);
        assert!(RowsCurve::new(&[], 1, 1).is_none());
    }
}
