//! The split of one decode step and the host store a plan needs: ONE definition,
//! used by the scheduler (the plan's `summary.host_memory_bytes` and the host
//! budget check) and by the runtime (the buffers it allocates and the slots it
//! reads).
//!
//! At context `s` (tokens already cached) a split cuts `[0, s)` into
//! `[0, g)` resident on the device, `[g, g + l)` recomputed from stored
//! activations `X`, and `[g + l, s)` transferred as K/V. Over a whole plan the
//! host stores `X` for every position some step recomputes and K/V for every
//! position some step transfers; nothing else.

use crate::{Dtype, ModelSpec, Plan};

/// The split of one decode step at context `s`, clamped to the context: what
/// the scheduler decides (it attaches a cost) and the executor carries out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// `[0, g)` resident.
    pub g: usize,
    /// `[g, g + l)` recomputed.
    pub l: usize,
    /// `[g + l, s)` transferred; `s` is the context length.
    pub s: usize,
    /// Chunks the recomputed range is sent and recomputed in (at least 1).
    pub chunks: usize,
}

impl Split {
    /// The split of `plan` at context `s` (`None` where the plan has no step for it).
    pub fn at(plan: &Plan, s: usize) -> Option<Split> {
        let st = plan.step_for(s)?;
        let g = st.resident_tokens.min(s);
        let l = st.recompute_tokens.min(s - g);
        Some(Split {
            g,
            l,
            s,
            chunks: st.chunks.clamp(1, l.max(1)),
        })
    }
}

/// A set of positions as sorted disjoint half-open intervals, with the slot of
/// each position (its rank in the set).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Coverage {
    /// `(start, end, first_slot)`
    spans: Vec<(usize, usize, usize)>,
    len: usize,
}

impl Coverage {
    /// The union of `intervals` (empty ones ignored).
    pub fn from_intervals(intervals: impl IntoIterator<Item = (usize, usize)>) -> Self {
        let mut iv: Vec<(usize, usize)> = intervals.into_iter().filter(|(a, b)| b > a).collect();
        iv.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::new();
        for (a, b) in iv {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let mut spans = Vec::with_capacity(merged.len());
        let mut len = 0;
        for (a, b) in merged {
            spans.push((a, b, len));
            len += b - a;
        }
        Coverage { spans, len }
    }

    /// Number of positions covered.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slot of `pos`, if covered.
    pub fn slot(&self, pos: usize) -> Option<usize> {
        let i = self.spans.partition_point(|s| s.1 <= pos);
        self.spans
            .get(i)
            .filter(|s| s.0 <= pos)
            .map(|s| s.2 + pos - s.0)
    }

    /// The first slot of `[a, b)` if the whole range is covered by one span
    /// (so its slots are contiguous).
    pub fn range(&self, a: usize, b: usize) -> Option<usize> {
        if a >= b {
            return Some(0);
        }
        let i = self.spans.partition_point(|s| s.1 <= a);
        self.spans
            .get(i)
            .filter(|s| s.0 <= a && b <= s.1)
            .map(|s| s.2 + a - s.0)
    }

    /// The positions covered by either.
    pub fn union(&self, other: &Coverage) -> Coverage {
        Coverage::from_intervals(self.spans.iter().chain(&other.spans).map(|s| (s.0, s.1)))
    }

    /// The covered parts of `[a, b)`, each as `(start, end, first_slot)`, in order.
    pub fn spans_within(
        &self,
        a: usize,
        b: usize,
    ) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        self.spans.iter().filter_map(move |&(s, e, slot)| {
            let (lo, hi) = (s.max(a), e.min(b));
            (lo < hi).then(|| (lo, hi, slot + lo - s))
        })
    }
}

/// What the host store holds for a plan: the positions whose `X` is ever read,
/// the positions whose K/V are ever read, and the largest resident prefix.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreLayout {
    pub x: Coverage,
    pub kv: Coverage,
    pub max_resident: usize,
}

impl StoreLayout {
    /// From a list of steps, each `(resident, recompute, context_to)`: `X` for
    /// the union of `[g, g + l)`, K/V for the union of `[g + l, context_to)`.
    /// The order of the steps and whether ranges are merged do not matter.
    pub fn from_steps(steps: impl IntoIterator<Item = (usize, usize, usize)>) -> Self {
        let steps: Vec<(usize, usize, usize)> = steps.into_iter().collect();
        let end = |a: usize, b: usize| a.saturating_add(b);
        StoreLayout {
            x: Coverage::from_intervals(steps.iter().map(|&(g, l, _)| (g, end(g, l)))),
            kv: Coverage::from_intervals(steps.iter().map(|&(g, l, to)| (end(g, l), to))),
            max_resident: steps.iter().map(|&(g, _, _)| g).max().unwrap_or(0),
        }
    }

    /// The layout of a plan's steps.
    pub fn for_plan(plan: &Plan) -> Self {
        Self::from_steps(
            plan.steps
                .iter()
                .map(|st| (st.resident_tokens, st.recompute_tokens, st.context_len_to)),
        )
    }

    /// What a run decoding contexts `from ..= to` reads, and no more: the
    /// steps that cover those contexts, each cut at `to` (a 5-token prompt on
    /// a plan made for 512 stores what its own contexts read, not what the
    /// plan's longest run would). A context `s` reads `X` at `[g, g+l)` and
    /// K/V at `[g+l, s)` with `g` and `l` capped at `s` (see [`Split::at`]),
    /// so over a step's contexts up to `to` that is `[g, min(g+l, to))` and
    /// `[g+l, to)`. Over a plan's whole coverage this is [`StoreLayout::for_plan`].
    pub fn for_contexts(plan: &Plan, from: usize, to: usize) -> Self {
        Self::from_steps(
            plan.steps
                .iter()
                .filter(|st| st.context_len_to >= from && st.context_len_from <= to)
                .map(|st| {
                    let end = st.context_len_to.min(to);
                    let g = st.resident_tokens;
                    (g, st.recompute_tokens.min(end.saturating_sub(g)), end)
                }),
        )
    }

    /// Everything resident: nothing stored on the host.
    pub fn all_resident(capacity: usize) -> Self {
        StoreLayout {
            x: Coverage::default(),
            kv: Coverage::default(),
            max_resident: capacity,
        }
    }

    /// A store that serves both layouts' reads.
    pub fn union(&self, other: &StoreLayout) -> StoreLayout {
        StoreLayout {
            x: self.x.union(&other.x),
            kv: self.kv.union(&other.kv),
            max_resident: self.max_resident.max(other.max_resident),
        }
    }

    /// Host bytes for every layer of `model`, `batch` sequences at `dtype`:
    /// `L*b*p*(|X|*h + |KV|*2*h_kv)` (saturating).
    pub fn host_bytes(&self, model: &ModelSpec, batch: usize, dtype: Dtype) -> u64 {
        model.store_bytes(
            self.x.len().saturating_mul(batch),
            self.kv.len().saturating_mul(batch),
            dtype.bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_slots() {
        let c = Coverage::from_intervals(vec![(5, 8), (0, 2), (7, 10), (12, 12)]);
        assert_eq!(c.len(), 7);
        assert_eq!(c.slot(0), Some(0));
        assert_eq!(c.slot(2), None);
        assert_eq!(c.slot(5), Some(2));
        assert_eq!(c.slot(9), Some(6));
        assert_eq!(c.slot(10), None);
        assert_eq!(c.range(6, 10), Some(3));
        assert_eq!(c.range(1, 6), None);
        assert_eq!(c.range(4, 4), Some(0));
        let spans: Vec<_> = c.spans_within(1, 9).collect();
        assert_eq!(spans, vec![(1, 2, 1), (5, 9, 2)]);
        assert_eq!(c.spans_within(2, 5).count(), 0);
        let u = c.union(&Coverage::from_intervals(vec![(2, 5), (20, 22)]));
        assert_eq!(u.len(), 7 + 3 + 2);
        assert_eq!(u.slot(2), Some(2));
        assert_eq!(u.range(0, 10), Some(0));
    }

    #[test]
    fn layout_is_the_union_whatever_the_order_or_merging() {
        let a = StoreLayout::from_steps([(0, 4, 10), (0, 8, 16), (4, 4, 20)]);
        let b = StoreLayout::from_steps([(4, 4, 20), (0, 8, 12), (0, 8, 16), (0, 4, 10)]);
        assert_eq!(a, b);
        assert_eq!(a.x.len(), 8);
        assert_eq!(a.kv.len(), 20 - 4);
        assert_eq!(a.max_resident, 4);
    }

    #[test]
    fn host_bytes_counts_activations_and_both_k_and_v() {
        let m = ModelSpec::preset("tiny-mha").unwrap();
        let layout = StoreLayout::from_steps([(0, 3, 10)]);
        let want = m.n_layers * 2 * 4 * (3 * m.hidden_size + 7 * 2 * m.kv_dim());
        assert_eq!(layout.host_bytes(&m, 2, Dtype::F32), want as u64);
        assert_eq!(
            StoreLayout::all_resident(64).host_bytes(&m, 2, Dtype::F32),
            0
        );
    }
}
