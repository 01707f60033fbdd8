//! Choosing the split: the LP solver (good_lp with the pure-Rust `microlp`
//! backend) and the exhaustive search that checks it, on the same cost model.
//!
//! For a fixed context `s`, resident prefix `g` and chunk count `c`, every term
//! of the cost model is linear in `l` between breakpoints (the profile's curve
//! points mapped to `l`). On each such interval the step time
//! `kv_ready + (L-1)*P + t_attn + t_dense` is a maximum of linear functions, so
//! minimising it is an LP: minimise `K + (L-1)*P` subject to `K >=` each
//! `kv_ready` term, `P >= t_x + t_kv`, `P >= compute_busy`, `2P >= K +
//! t_attn` (see `cost.rs`), `l` in the interval. The step
//! time is convex on the interval, so the best block-aligned `l` there is one of
//! the aligned neighbours of the LP's `l*` (or an aligned end of the interval);
//! among equal costs the smallest such `l` is found by bisection. The best over
//! intervals and chunk counts wins; ties prefer smaller `l`, then smaller `c`.

use good_lp::{constraint, microlp, variable, ProblemVariables, Solution, SolverModel};
use plans::Schedule;

use crate::cost::{CostModel, StepCost};
use crate::SchedError;

/// Which solver finds the split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Solver {
    /// Linear program per linear interval (good_lp, microlp backend).
    Lp,
    /// Every block-aligned split: the reference the LP is tested against.
    Exhaustive,
}

/// Chunk counts the `chunked` schedule considers (`paper` uses 1 only).
pub const CHUNK_CANDIDATES: [usize; 8] = [1, 2, 3, 4, 6, 8, 12, 16];

/// A candidate split of the context `[0, s)` and what the cost model predicts
/// for it; the plan file records it as a step, which the runtime reads back as
/// a [`plans::Split`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PricedSplit {
    /// Tokens whose K/V stay on the GPU: `[0, resident)`.
    pub resident: usize,
    /// Tokens recomputed from activations: `[resident, resident + recompute)`.
    pub recompute: usize,
    /// Chunks the activations are sent and recomputed in.
    pub chunks: usize,
    /// The cost model's prediction for this split.
    pub cost: StepCost,
}

/// The largest time, µs, handed to the LP (about 30,000 years): beyond it the
/// profile's figures are absurd and the solver's arithmetic is not trusted.
const MAX_LP_US: f64 = 1e18;

/// Relative tolerance under which two step times count as a tie.
const TIE: f64 = 1e-12;

/// Whether `a` is strictly better than `b`: faster beyond the tie tolerance,
/// or tied with fewer recomputed tokens, or tied on both with fewer chunks.
pub(crate) fn better(a: &PricedSplit, b: &PricedSplit) -> bool {
    let tol = TIE * b.cost.step.abs();
    if a.cost.step < b.cost.step - tol {
        return true;
    }
    if a.cost.step > b.cost.step + tol {
        return false;
    }
    (a.recompute, a.chunks) < (b.recompute, b.chunks)
}

/// The block-aligned values of `l` in `[0, n]`: `min(i * block, n)` for
/// `i in 0..=ceil(n / block)`.
struct Aligned {
    n: usize,
    block: usize,
    last: usize,
}

impl Aligned {
    fn new(n: usize, block: usize) -> Self {
        Aligned {
            n,
            block,
            last: n.div_ceil(block),
        }
    }
    fn at(&self, i: usize) -> usize {
        (i.saturating_mul(self.block)).min(self.n)
    }
    /// Index of the largest aligned value `<= x` (x >= 0; `n` itself is aligned).
    fn floor(&self, x: f64) -> usize {
        if x >= self.n as f64 {
            return self.last;
        }
        let i = (x.max(0.0) / self.block as f64).floor();
        (i.min(self.last as f64)) as usize
    }
    /// Index of the smallest aligned value `>= x` (x <= n).
    fn ceil(&self, x: f64) -> usize {
        let i = (x.max(0.0) / self.block as f64).ceil();
        (i.min(self.last as f64)) as usize
    }
}

impl CostModel {
    /// The best split at context `s` with `g` resident tokens (usually
    /// [`CostModel::resident_tokens`]) for `schedule`, block-aligned to
    /// `block_tokens`. When recomputation cannot save bytes (`h >= 2*h_kv`),
    /// nothing is recomputed whatever the schedule.
    pub fn best_split(
        &self,
        s: usize,
        g: usize,
        schedule: Schedule,
        block_tokens: usize,
        solver: Solver,
    ) -> Result<PricedSplit, SchedError> {
        let chunks: &[usize] = match schedule {
            Schedule::Transfer => &[],
            Schedule::Paper => &[1],
            Schedule::Chunked => &CHUNK_CANDIDATES,
        };
        let per_c = self.best_per_chunks(s, g, chunks, block_tokens, solver, schedule)?;
        Ok(pick(&per_c).unwrap_or_else(|| self.no_recompute(s, g)))
    }

    /// The split with nothing recomputed.
    pub(crate) fn no_recompute(&self, s: usize, g: usize) -> PricedSplit {
        let g = g.min(s);
        PricedSplit {
            resident: g,
            recompute: 0,
            chunks: 1,
            cost: self.step(s, g, 0, 1, Schedule::Transfer),
        }
    }

    /// The best split for each chunk count in `chunks` (the `l = 0` split first).
    pub(crate) fn best_per_chunks(
        &self,
        s: usize,
        g: usize,
        chunks: &[usize],
        block_tokens: usize,
        solver: Solver,
        schedule: Schedule,
    ) -> Result<Vec<PricedSplit>, SchedError> {
        if block_tokens == 0 {
            return Err(SchedError::Invalid {
                field: plans::Field::BlockTokens,
                reason: "must be at least 1".into(),
            });
        }
        let g = g.min(s);
        let lo = self.window_start(s);
        if lo > g {
            // A sliding window starts past the resident prefix: `[g, lo)` is
            // never read, so solve as if it were resident, then make the
            // recomputed range start at `g` (the executor reads only `[lo, s)`).
            let inner = self.best_per_chunks(s, lo, chunks, block_tokens, solver, schedule)?;
            return Ok(inner
                .into_iter()
                .map(|p| {
                    let l = if p.recompute > 0 {
                        p.recompute + lo - g
                    } else {
                        0
                    };
                    self.split_at(s, g, l, p.chunks)
                })
                .collect());
        }
        let mut out = vec![self.no_recompute(s, g)];
        if !self.recompute_saves_bytes() || s == g {
            return Ok(out);
        }
        for &c in chunks.iter().filter(|&&c| c >= 1) {
            let best = match solver {
                Solver::Exhaustive => self.exhaustive_for(s, g, c, block_tokens),
                Solver::Lp => self.lp_for(s, g, c, block_tokens, schedule)?,
            };
            out.push(best);
        }
        Ok(out)
    }

    /// The split recomputing `l` tokens in `c` chunks (at most `l`: a chunk
    /// holds at least one token).
    fn split_at(&self, s: usize, g: usize, l: usize, c: usize) -> PricedSplit {
        let c = c.min(l.max(1));
        PricedSplit {
            resident: g,
            recompute: l,
            chunks: c,
            cost: self.step_clipped(s, g, l, c),
        }
    }

    /// Every block-aligned `l > 0` for `c` chunks.
    fn exhaustive_for(&self, s: usize, g: usize, c: usize, block: usize) -> PricedSplit {
        let al = Aligned::new(s - g, block);
        let mut best = self.split_at(s, g, al.at(1), c);
        for i in 2..=al.last {
            let cand = self.split_at(s, g, al.at(i), c);
            if better(&cand, &best) {
                best = cand;
            }
        }
        best
    }

    /// The LP on every linear interval, then the aligned neighbours of `l*`.
    fn lp_for(
        &self,
        s: usize,
        g: usize,
        c: usize,
        block: usize,
        schedule: Schedule,
    ) -> Result<PricedSplit, SchedError> {
        let n = s - g;
        let nf = n as f64;
        let cf = c as f64;
        let al = Aligned::new(n, block);
        let mut bps = self.breakpoints(nf, cf);
        bps.push(0.0);
        bps.push(nf);
        // Below `c` tokens a split has fewer chunks than `c` (a chunk holds
        // at least one token), which the LP's terms do not model: there the
        // aligned points (fewer than `c`) are priced one by one.
        let few = cf.min(nf);
        bps.push(few);
        bps.sort_by(f64::total_cmp);
        bps.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
        // Smallest l > 0 as a fallback best: it is aligned index 1.
        let mut best = self.split_at(s, g, al.at(1), c);
        for w in bps.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            // Aligned points in [lo, hi], l > 0 (l = 0 has its own cost and is handled apart).
            let i_lo = al.ceil(lo).max(1);
            let i_hi = al.floor(hi);
            if i_lo > i_hi {
                continue;
            }
            if hi <= few {
                for i in i_lo..=i_hi {
                    let cand = self.split_at(s, g, al.at(i), c);
                    if better(&cand, &best) {
                        best = cand;
                    }
                }
                continue;
            }
            let l_star =
                self.solve_interval(s, nf, cf, lo, hi)
                    .map_err(|reason| SchedError::Solver {
                        schedule,
                        context: s,
                        profile: self.profile.clone(),
                        figures: self.lp_figures(),
                        reason,
                    })?;
            let mut local: Option<(usize, PricedSplit)> = None;
            for i in [al.floor(l_star), al.ceil(l_star), i_lo, i_hi] {
                let i = i.clamp(i_lo, i_hi);
                let cand = self.split_at(s, g, al.at(i), c);
                if local.as_ref().is_none_or(|(_, b)| better(&cand, b)) {
                    local = Some((i, cand));
                }
            }
            let Some((i_best, mut local)) = local else {
                continue;
            };
            // Convex on the interval: the aligned points no worse than the best form
            // a run ending at i_best; bisect for its smallest member.
            let limit = local.cost.step * (1.0 + TIE);
            let (mut a, mut b) = (i_lo, i_best);
            while a < b {
                let mid = a + (b - a) / 2;
                if self.split_at(s, g, al.at(mid), c).cost.step <= limit {
                    b = mid;
                } else {
                    a = mid + 1;
                }
            }
            if a < i_best {
                local = self.split_at(s, g, al.at(a), c);
            }
            if better(&local, &best) {
                best = local;
            }
        }
        Ok(best)
    }

    /// Solves the LP on `[lo, hi]` (every term linear there) and returns `l*`.
    /// Variables: `u` in `[0, 1]` with `l = lo + u*(hi - lo)`, `K`, `P`; times in µs.
    fn solve_interval(&self, s: usize, n: f64, c: f64, lo: f64, hi: f64) -> Result<f64, String> {
        let us = 1e6;
        let (x0, kv0, r0) = self.raw_terms(n, lo, c);
        let (x1, kv1, r1) = self.raw_terms(n, hi, c);
        let (x0, kv0, r0) = (x0 * us, kv0 * us, r0 * us);
        let (dx, dkv, dr) = (x1 * us - x0, kv1 * us - kv0, r1 * us - r0);
        let attn = self.t_attn(s as f64) * us;
        let fixed = attn + self.t_dense() * us;
        let layers_after_first = self.n_layers().saturating_sub(1) as f64;
        // microlp asserts on non-finite numbers; huge ones overflow inside it.
        let coefficients = [x0, kv0, r0, dx, dkv, dr, fixed];
        if coefficients
            .iter()
            .any(|v| !(v.is_finite() && v.abs() <= MAX_LP_US))
        {
            return Err(format!(
                "the layer times it would be given are out of range (µs at l = {lo}: activations \
                 {x0:e}, K/V {kv0:e}, recompute {r0:e}; attention + dense {fixed:e})"
            ));
        }

        let mut vars = ProblemVariables::new();
        let u = vars.add(variable().min(0.0).max(1.0));
        let k = vars.add(variable().min(0.0));
        let p = vars.add(variable().min(0.0));
        let solution = vars
            .minimise(k + layers_after_first * p)
            .using(microlp)
            .with(constraint!(k >= (dx + dkv) * u + (x0 + kv0)))
            .with(constraint!(k >= (dx / c + c * dr) * u + (x0 / c + c * r0)))
            .with(constraint!(k >= (dx + dr) * u + (x0 + r0)))
            .with(constraint!(p >= (dx + dkv) * u + (x0 + kv0)))
            .with(constraint!(p >= (c * dr) * u + (c * r0 + fixed)))
            .with(constraint!(2.0 * p >= k + attn))
            .solve()
            .map_err(|e| e.to_string())?;
        let u_star = solution.value(u).clamp(0.0, 1.0);
        Ok(lo + u_star * (hi - lo))
    }
}

/// The best of several splits (see [`better`]), `None` if empty.
pub(crate) fn pick(splits: &[PricedSplit]) -> Option<PricedSplit> {
    let mut it = splits.iter();
    let mut best = *it.next()?;
    for s in it {
        if better(s, &best) {
            best = *s;
        }
    }
    Some(best)
}
