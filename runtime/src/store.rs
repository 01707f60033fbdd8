//! The host store: per layer, preallocated host buffers for the attention
//! inputs `X` (positions the plan ever recomputes) and for K/V (positions it
//! ever transfers), written at an offset as each token is produced and never
//! concatenated. Positions the plan never reads are not stored (resident ones
//! live on the device).
//!
//! Layout: `X[layer]` is `[batch, x_slots, h]`, `K[layer]` and `V[layer]` are
//! `[batch, kv_slots, kv_dim]`; a position's slot is its rank among the stored
//! positions, so a range the plan reads is contiguous in every batch row.

use kernels::{Backend, HostBuf};
use plans::Plan;

use crate::{Result, RuntimeError};

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
    pub fn from_intervals(mut iv: Vec<(usize, usize)>) -> Self {
        iv.retain(|(a, b)| b > a);
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
}

/// The split at one decode step, clamped to the context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// `[0, g)` resident.
    pub g: usize,
    /// `[g, g + l)` recomputed.
    pub l: usize,
    /// `[g + l, s)` transferred.
    pub s: usize,
    pub chunks: usize,
}

impl Split {
    /// The plan's split at context `s` (`None` past the plan's steps).
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

/// What the store must hold for a plan: positions whose `X` is ever read
/// and positions whose K/V are ever read, and the largest resident prefix.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreLayout {
    pub x: Coverage,
    pub kv: Coverage,
    pub max_resident: usize,
}

impl StoreLayout {
    /// From all of a plan's steps, as the scheduler defines
    /// `summary.host_memory_bytes` (the largest run the plan serves): `X` for
    /// the union of `[g, g+l)`, K/V for the union of `[g+l, context_len_to)`.
    pub fn for_plan(plan: &Plan) -> Self {
        let (from, to) = plan.covered().unwrap_or((1, 0));
        Self::for_contexts(plan, from, to)
    }

    /// What a run decoding contexts `from ..= to` reads, and no more: the
    /// steps that cover those contexts, each cut at `to` (a 5-token prompt on
    /// a plan made for 512 stores what contexts 5..=5+n-1 read, not what 575
    /// would). The positions a context `s` reads are `[g, g+l)` for `X` and
    /// `[g+l, s)` for K/V with `g`, `l` capped at `s` (see [`Split::at`]), so the
    /// union over a step's contexts up to `to` is `[g, min(g+l, to))` and
    /// `[g+l, to)`. Over a plan's whole coverage this is [`StoreLayout::for_plan`].
    pub fn for_contexts(plan: &Plan, from: usize, to: usize) -> Self {
        let steps: Vec<_> = plan
            .steps
            .iter()
            .filter(|st| st.context_len_to >= from && st.context_len_from <= to)
            .map(|st| {
                let end = st.context_len_to.min(to);
                let (g, l) = (st.resident_tokens, st.recompute_tokens);
                ((g, (g + l).min(end)), (g + l, end), g)
            })
            .collect();
        StoreLayout {
            x: Coverage::from_intervals(steps.iter().map(|s| s.0).collect()),
            kv: Coverage::from_intervals(steps.iter().map(|s| s.1).collect()),
            max_resident: steps.iter().map(|s| s.2).max().unwrap_or(0),
        }
    }

    /// Everything resident: nothing stored on the host.
    pub fn all_resident(capacity: usize) -> Self {
        StoreLayout {
            x: Coverage::default(),
            kv: Coverage::default(),
            max_resident: capacity,
        }
    }

    /// Host bytes for `layers` layers and `batch` sequences at `dtype_bytes`.
    pub fn bytes(&self, layers: usize, batch: usize, h: usize, kv_dim: usize, p: usize) -> u64 {
        let per_layer = self.x.len() * h + self.kv.len() * 2 * kv_dim;
        (per_layer * layers * batch * p) as u64
    }
}

/// Which kind of stored value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    X,
    Kv,
}

/// The preallocated host buffers and the record of what has been written.
pub struct HostStore {
    pub layout: StoreLayout,
    batch: usize,
    h: usize,
    kv_dim: usize,
    pub x: Vec<HostBuf>,
    pub k: Vec<HostBuf>,
    pub v: Vec<HostBuf>,
    /// `written[layer][pos]` bit 0: X, bit 1: K/V.
    written: Vec<Vec<u8>>,
}

impl HostStore {
    pub fn new(
        backend: &Backend,
        layout: StoreLayout,
        layers: usize,
        batch: usize,
        h: usize,
        kv_dim: usize,
        capacity: usize,
    ) -> Result<Self> {
        let alloc = |n: usize| {
            backend
                .alloc_host(n.max(1))
                .map_err(|e| RuntimeError::compute("alloc_host", None, e))
        };
        let (mut x, mut k, mut v) = (vec![], vec![], vec![]);
        for _ in 0..layers {
            x.push(alloc(batch * layout.x.len() * h)?);
            k.push(alloc(batch * layout.kv.len() * kv_dim)?);
            v.push(alloc(batch * layout.kv.len() * kv_dim)?);
        }
        Ok(HostStore {
            layout,
            batch,
            h,
            kv_dim,
            x,
            k,
            v,
            written: vec![vec![0; capacity]; layers],
        })
    }

    fn cov(&self, kind: Kind) -> &Coverage {
        match kind {
            Kind::X => &self.layout.x,
            Kind::Kv => &self.layout.kv,
        }
    }

    /// Element offset of `(batch row b, slot)` in a buffer of `kind`.
    pub fn offset(&self, kind: Kind, b: usize, slot: usize) -> usize {
        let (cov, width) = match kind {
            Kind::X => (&self.layout.x, self.h),
            Kind::Kv => (&self.layout.kv, self.kv_dim),
        };
        (b * cov.len() + slot) * width
    }

    /// Whether `pos` is stored for `kind` (the writer calls this per token).
    pub fn stores(&self, kind: Kind, pos: usize) -> Option<usize> {
        self.cov(kind).slot(pos)
    }

    /// Records that `[a, b)` of `layer` has been written for `kind`.
    pub fn mark_written(&mut self, kind: Kind, layer: usize, a: usize, b: usize) {
        let bit = if kind == Kind::X { 1 } else { 2 };
        if let Some(w) = self.written.get_mut(layer) {
            for p in a..b.min(w.len()) {
                w[p] |= bit;
            }
        }
    }

    /// The first slot of `[a, b)` for a read, checking it is stored and written.
    pub fn read_range(&self, kind: Kind, layer: usize, a: usize, b: usize) -> Result<usize> {
        let err = |reason: String| RuntimeError::compute("host store read", Some(layer), reason);
        let slot = self.cov(kind).range(a, b).ok_or_else(|| {
            err(format!(
                "{kind:?} positions {a}..{b} are not all stored by this plan"
            ))
        })?;
        let bit = if kind == Kind::X { 1 } else { 2 };
        let w = &self.written[layer];
        if let Some(p) = (a..b).find(|&p| w.get(p).is_none_or(|x| x & bit == 0)) {
            return Err(err(format!(
                "{kind:?} of position {p} read before it was written"
            )));
        }
        Ok(slot)
    }

    /// Bytes held on the host.
    pub fn bytes(&self, dtype_bytes: usize) -> u64 {
        self.layout
            .bytes(self.x.len(), self.batch, self.h, self.kv_dim, dtype_bytes)
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
    }
}
