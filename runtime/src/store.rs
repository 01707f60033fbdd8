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
use plans::{Coverage, Dtype, ModelSpec, StoreLayout};

use crate::{Result, RuntimeError};

/// Which stored value: the attention inputs `X` or the K/V.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
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

    fn cov(&self, kind: Stored) -> &Coverage {
        match kind {
            Stored::X => &self.layout.x,
            Stored::Kv => &self.layout.kv,
        }
    }

    /// Element offset of `(batch row b, slot)` in a buffer of `kind`.
    pub fn offset(&self, kind: Stored, b: usize, slot: usize) -> usize {
        let (cov, width) = match kind {
            Stored::X => (&self.layout.x, self.h),
            Stored::Kv => (&self.layout.kv, self.kv_dim),
        };
        (b * cov.len() + slot) * width
    }

    /// Elements between one batch row's region and the next in a buffer of `kind`.
    pub fn pitch(&self, kind: Stored) -> usize {
        match kind {
            Stored::X => self.layout.x.len() * self.h,
            Stored::Kv => self.layout.kv.len() * self.kv_dim,
        }
    }

    /// Whether `pos` is stored for `kind` (the writer calls this per token).
    pub fn stores(&self, kind: Stored, pos: usize) -> Option<usize> {
        self.cov(kind).slot(pos)
    }

    /// Records that `[a, b)` of `layer` has been written for `kind`.
    pub fn mark_written(&mut self, kind: Stored, layer: usize, a: usize, b: usize) {
        let bit = if kind == Stored::X { 1 } else { 2 };
        if let Some(w) = self.written.get_mut(layer) {
            for p in a..b.min(w.len()) {
                w[p] |= bit;
            }
        }
    }

    /// The first slot of `[a, b)` for a read, checking it is stored and written.
    pub fn read_range(&self, kind: Stored, layer: usize, a: usize, b: usize) -> Result<usize> {
        let err = |reason: String| RuntimeError::compute("host store read", Some(layer), reason);
        let slot = self.cov(kind).range(a, b).ok_or_else(|| {
            err(format!(
                "{kind:?} positions {a}..{b} are not all stored by this plan"
            ))
        })?;
        let bit = if kind == Stored::X { 1 } else { 2 };
        let w = &self.written[layer];
        if let Some(p) = (a..b).find(|&p| w.get(p).is_none_or(|x| x & bit == 0)) {
            return Err(err(format!(
                "{kind:?} of position {p} read before it was written"
            )));
        }
        Ok(slot)
    }

    /// Bytes held on the host for `model`'s layers at `dtype` (the layout's
    /// [`StoreLayout::host_bytes`], the figure a plan's summary reports).
    pub fn host_bytes(&self, model: &ModelSpec, dtype: Dtype) -> u64 {
        self.layout.host_bytes(model, self.batch, dtype)
    }
}
