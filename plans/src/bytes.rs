//! The device bytes the decode executor allocates, written once: the
//! planner's GPU budget (`scheduler::staging_bytes`), the executor's memory
//! check, and the test that holds the executor's allocations to it all use
//! [`ExecutorBytes`].

use crate::ModelSpec;

/// `a * b * ...` in bytes, saturating: a product past `u64` is "more than any
/// machine has", which a memory check refuses just the same.
pub fn bytes_of(factors: &[usize]) -> u64 {
    factors
        .iter()
        .try_fold(1u64, |acc, &f| acc.checked_mul(f as u64))
        .unwrap_or(u64::MAX)
}

/// What `runtime::Executor::new` allocates on the device for `batch`
/// sequences up to `capacity` positions with `resident` resident positions,
/// in elements of `p` bytes (ids: 4 bytes). Every buffer holds at least one
/// element, as the backends allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecutorBytes {
    /// Two staging buffers each of K, V (`[batch, capacity, kv_dim]`) and X
    /// (`[batch, capacity, h]`): what a step's copies land in.
    pub staging: u64,
    /// Recomputed K and V before they are scattered (`[batch, capacity, kv_dim]` each).
    pub recomputed: u64,
    /// The resident prefix's K and V, every layer.
    pub resident: u64,
    /// The new token's X, K and V per layer, the step's activations and the logits.
    pub step: u64,
    /// Token ids and positions (`u32`).
    pub ids: u64,
}

impl ExecutorBytes {
    pub fn new(
        model: &ModelSpec,
        batch: usize,
        capacity: usize,
        resident: usize,
        p: usize,
    ) -> Self {
        let (h, kvd, nl) = (model.hidden_size, model.kv_dim(), model.n_layers);
        let (qd, f, v) = (model.q_dim(), model.intermediate_size, model.vocab_size);
        // Elements of one buffer, as allocated (at least one), in bytes.
        let buf = |dims: &[usize], esz: usize| bytes_of(dims).max(1).saturating_mul(esz as u64);
        let times = |n: usize, b: u64| b.saturating_mul(n as u64);
        let kv_stage = buf(&[batch, capacity, kvd], p);
        let x_stage = buf(&[batch, capacity, h], p);
        let staging = times(2, kv_stage)
            .saturating_add(times(2, kv_stage))
            .saturating_add(times(2, x_stage));
        let recomputed = times(2, kv_stage);
        let resident = times(2 * nl, buf(&[batch, resident, kvd], p));
        let per_layer = buf(&[batch, h], p)
            .saturating_add(buf(&[batch, kvd], p))
            .saturating_add(buf(&[batch, kvd], p));
        let activations = [h, h, qd, qd, h, f, f]
            .iter()
            .fold(0u64, |a, &w| a.saturating_add(buf(&[batch, w], p)));
        let step = times(nl, per_layer)
            .saturating_add(activations)
            .saturating_add(buf(&[batch, v], p));
        let ids = buf(&[batch], 4).saturating_add(buf(&[batch + batch * capacity], 4));
        ExecutorBytes {
            staging,
            recomputed,
            resident,
            step,
            ids,
        }
    }

    /// Everything, in bytes.
    pub fn total(&self) -> u64 {
        [
            self.staging,
            self.recomputed,
            self.resident,
            self.step,
            self.ids,
        ]
        .iter()
        .fold(0u64, |a, b| a.saturating_add(*b))
    }
}
