//! Bytes and blocks, each rule written once.
//!
//! - K/V and host-store bytes of so many tokens: [`ModelSpec::kv_bytes`],
//!   [`ModelSpec::kv_layer_bytes`], [`ModelSpec::store_bytes`].
//! - Blocks of so many tokens: [`blocks_for`].
//! - What the decode executor allocates on the device: [`ExecutorBytes`], used
//!   by the planner's GPU budget (`scheduler::staging_bytes`), the executor's
//!   memory check and a test that holds the executor's allocations to it.
//! - What the paged serving engine allocates on the device: [`PagedBytes`],
//!   used by the engine's memory check, `--kv-memory-fraction`,
//!   `--device-memory` and `--gpu-memory-budget`, and a test that holds the
//!   engine's allocations to it.

use crate::ModelSpec;

/// `a * b * ...` in bytes, saturating: a product past `u64` is "more than any
/// machine has", which a memory check refuses just the same.
pub fn bytes_of(factors: &[usize]) -> u64 {
    factors
        .iter()
        .try_fold(1u64, |acc, &f| acc.checked_mul(f as u64))
        .unwrap_or(u64::MAX)
}

/// Blocks of `block_size` tokens that hold `tokens` tokens.
pub fn blocks_for(tokens: usize, block_size: usize) -> usize {
    tokens.div_ceil(block_size.max(1))
}

/// The most rows one prefill pass of the decode executor runs: it prefills
/// whole prompts in groups up to this many rows (one prompt at the least), so
/// prefill's activations stay bounded at any batch.
pub const PREFILL_ROWS: usize = 4096;

/// Prompts of `prompt` tokens prefilled together by the decode executor, of
/// `batch`: as many as fit in [`PREFILL_ROWS`] rows, one at the least.
pub fn prefill_group(batch: usize, prompt: usize) -> usize {
    (PREFILL_ROWS / prompt.max(1)).clamp(1, batch.max(1))
}

/// One buffer of `dims` elements of `esz` bytes, as the backends allocate it
/// (at least one element).
fn buf(dims: &[usize], esz: usize) -> u64 {
    bytes_of(dims).max(1).saturating_mul(esz as u64)
}

fn sum(parts: &[u64]) -> u64 {
    parts.iter().fold(0u64, |a, b| a.saturating_add(*b))
}

impl ModelSpec {
    /// K and V of `tokens` token rows of one layer, `p` bytes an element.
    pub fn kv_layer_bytes(&self, tokens: usize, p: usize) -> u64 {
        bytes_of(&[2, tokens, self.kv_dim(), p])
    }

    /// `X` of `tokens` token rows of one layer, `p` bytes an element.
    pub fn x_layer_bytes(&self, tokens: usize, p: usize) -> u64 {
        bytes_of(&[tokens, self.hidden_size, p])
    }

    /// K and V of `tokens` tokens over every layer (a block's, with `tokens`
    /// the block size).
    pub fn kv_bytes(&self, tokens: usize, p: usize) -> u64 {
        self.kv_layer_bytes(tokens, p)
            .saturating_mul(self.n_layers as u64)
    }

    /// A host store over every layer: `X` of `x_tokens` tokens and K/V of
    /// `kv_tokens` tokens, `p` bytes an element.
    pub fn store_bytes(&self, x_tokens: usize, kv_tokens: usize, p: usize) -> u64 {
        self.x_layer_bytes(x_tokens, p)
            .saturating_mul(self.n_layers as u64)
            .saturating_add(self.kv_bytes(kv_tokens, p))
    }

    /// The activations of a pass through the layers over `rows` rows, as
    /// `runtime`'s `Activations` allocates them: the residual stream, a
    /// normalised input, Q, the attention output, a scratch of the hidden
    /// size, and the MLP's gate and up.
    fn activation_bytes(&self, rows: usize, p: usize) -> u64 {
        let (h, qd, f) = (self.hidden_size, self.q_dim(), self.intermediate_size);
        [h, h, qd, qd, h, f, f]
            .iter()
            .fold(0u64, |a, &w| a.saturating_add(buf(&[rows, w], p)))
    }
}

/// What `runtime::Executor` allocates on the device for `batch` sequences of
/// `prompt` prompt tokens up to `capacity` positions with `resident` resident
/// positions, in elements of `p` bytes (ids: 4 bytes): what `Executor::new`
/// allocates for the whole run, and what its prefill allocates for itself
/// and frees. Every buffer holds at least one element, as the backends
/// allocate.
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
    /// Prefill's own activations, ids and positions over the rows of one
    /// group of prompts ([`prefill_group`]), freed when it ends (see
    /// [`ExecutorBytes::run`]).
    pub prefill: u64,
}

impl ExecutorBytes {
    pub fn new(
        model: &ModelSpec,
        batch: usize,
        capacity: usize,
        resident: usize,
        prompt: usize,
        p: usize,
    ) -> Self {
        let (h, kvd, nl) = (model.hidden_size, model.kv_dim(), model.n_layers);
        let v = model.vocab_size;
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
        let step = times(nl, per_layer)
            .saturating_add(model.activation_bytes(batch, p))
            .saturating_add(buf(&[batch, v], p));
        let ids = buf(&[batch], 4).saturating_add(buf(&[batch + batch * capacity], 4));
        let rows = prefill_group(batch, prompt).saturating_mul(prompt);
        let prefill = model
            .activation_bytes(rows, p)
            .saturating_add(buf(&[rows], 4).saturating_mul(2));
        ExecutorBytes {
            staging,
            recomputed,
            resident,
            step,
            ids,
            prefill,
        }
    }

    /// What `Executor::new` allocates for the whole run, in bytes.
    pub fn run(&self) -> u64 {
        sum(&[
            self.staging,
            self.recomputed,
            self.resident,
            self.step,
            self.ids,
        ])
    }

    /// The most the run holds at once, prefill's own buffers included, in bytes.
    pub fn total(&self) -> u64 {
        self.run().saturating_add(self.prefill)
    }
}

/// The shape of a paged serving engine, its pool aside: what its step
/// buffers are sized by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagedShape {
    /// Tokens per block.
    pub block_size: usize,
    /// The most sequences in one decode step.
    pub max_batch: usize,
    /// Whether every token's `X` is kept (for recomputing K/V from it):
    /// then the engine stages `X` of whole offloaded prefixes.
    pub keep_activations: bool,
    /// Tokens of the longest request (prompt plus output).
    pub longest: usize,
}

impl PagedShape {
    /// The longest request's tokens in whole blocks: the rows of a
    /// sequence's gathered K/V.
    pub fn max_tokens(&self) -> usize {
        blocks_for(self.longest, self.block_size).max(1) * self.block_size.max(1)
    }

    /// `X` rows one step may stage: every sequence's whole context when
    /// activations are kept, else none.
    pub fn stage_tokens(&self) -> usize {
        match self.keep_activations {
            true => self.max_batch.saturating_mul(self.max_tokens()),
            false => 0,
        }
    }

    /// The `u32` entries of a step's id buffer: ids, positions, new-token
    /// pool rows and lengths (`max_batch` each), every sequence's gather
    /// table and the batch's padded tables (`max_batch` x the most blocks
    /// each), and the staged rows' positions and destinations.
    pub fn step_ids(&self) -> usize {
        let (b, blocks) = (self.max_batch, self.max_tokens() / self.block_size.max(1));
        4 * b + 2 * b * blocks + 2 * self.stage_tokens()
    }
}

/// What `runtime::PagedEngine::new` allocates on the device for a pool of
/// `capacity_blocks` blocks, in elements of `p` bytes (ids: 4 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagedBytes {
    /// The K and V pools, every layer: `capacity_blocks` x [`PagedBytes::per_block`].
    pub pool: u64,
    /// The decode step's buffers: the gathered K/V attention reads (two
    /// pairs, one per layer parity), staged `X` and the K/V recomputed from
    /// it, the new token's K/V, the layer inputs, activations and logits.
    pub buffers: u64,
    /// The step's id buffer and the positions ramp (`u32`).
    pub ids: u64,
    /// A prefill's own activations, K, V and ids over the longest request,
    /// freed when it ends (see [`PagedBytes::engine`]).
    pub prefill: u64,
}

impl PagedBytes {
    pub fn new(model: &ModelSpec, shape: &PagedShape, capacity_blocks: usize, p: usize) -> Self {
        let (h, kvd, nl) = (model.hidden_size, model.kv_dim(), model.n_layers);
        let (b, t, st) = (shape.max_batch, shape.max_tokens(), shape.stage_tokens());
        let pool_tokens = capacity_blocks.saturating_mul(shape.block_size);
        let pool = buf(&[pool_tokens, kvd], p).saturating_mul(2 * nl as u64);
        let layer_inputs = match shape.keep_activations {
            true => nl,
            false => 1,
        };
        let buffers = sum(&[
            buf(&[b, t, kvd], p).saturating_mul(4),
            buf(&[st, h], p).saturating_mul(2),
            buf(&[st, kvd], p),
            buf(&[b, kvd], p).saturating_mul(2),
            buf(&[b, h], p).saturating_mul(layer_inputs as u64),
            model.activation_bytes(b, p),
            buf(&[b, model.vocab_size], p),
        ]);
        let ids = buf(&[shape.step_ids()], 4).saturating_add(buf(&[t], 4));
        let longest = shape.longest;
        let prefill = sum(&[
            model.activation_bytes(longest, p),
            buf(&[longest, kvd], p).saturating_mul(2),
            buf(&[longest], 4),
        ]);
        PagedBytes {
            pool,
            buffers,
            ids,
            prefill,
        }
    }

    /// What `PagedEngine::new` allocates for the engine's life, in bytes.
    pub fn engine(&self) -> u64 {
        sum(&[self.pool, self.buffers, self.ids])
    }

    /// K and V of one block over every layer: what each block of the pool takes.
    pub fn per_block(model: &ModelSpec, block_size: usize, p: usize) -> u64 {
        model.kv_bytes(block_size, p)
    }

    /// Everything but the pool, in bytes: what the engine holds at the
    /// most whatever its capacity.
    pub fn fixed(&self) -> u64 {
        sum(&[self.buffers, self.ids, self.prefill])
    }

    /// The most the engine holds at once, a prefill's own buffers included, in bytes.
    pub fn total(&self) -> u64 {
        self.pool.saturating_add(self.fixed())
    }

    /// The most blocks whose pools fit in `budget` bytes beside the step's
    /// buffers (0 where the buffers alone take it all).
    pub fn blocks_within(model: &ModelSpec, shape: &PagedShape, p: usize, budget: u64) -> usize {
        let fixed = PagedBytes::new(model, shape, 0, p).fixed();
        let per_block = Self::per_block(model, shape.block_size, p).max(1);
        usize::try_from(budget.saturating_sub(fixed) / per_block).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dtype;

    /// The byte rules follow the element size: half for f16 and bf16 of
    /// what f32 takes (the finding of an earlier issue: 4 bytes were
    /// hard-coded), in 64-bit arithmetic throughout.
    #[test]
    fn byte_rules_follow_the_dtype_in_64_bits() {
        let m = ModelSpec::preset("llama-2-7b").unwrap();
        for d in [Dtype::F16, Dtype::Bf16] {
            let (e, f) = (d.bytes(), Dtype::F32.bytes());
            assert_eq!(e, 2, "{d:?}");
            assert_eq!(m.x_layer_bytes(8 * 1000, e), 8 * 1000 * 4096 * 2);
            assert_eq!(m.kv_layer_bytes(8 * 3000, e), 2 * 8 * 3000 * 4096 * 2);
            assert_eq!(2 * m.kv_bytes(100, e), m.kv_bytes(100, f));
            assert_eq!(2 * m.store_bytes(7, 9, e), m.store_bytes(7, 9, f));
        }
        // Batch 8 at context 16384, f16, 32 layers: 68.7 GB, past 32 bits.
        assert_eq!(m.kv_bytes(8 * 16_384, 2), 68_719_476_736);
        assert_eq!(m.store_bytes(5, 3, 2), 32 * 2 * (5 * 4096 + 3 * 2 * 4096));
        assert_eq!(m.kv_bytes(usize::MAX, 2), u64::MAX);
    }

    #[test]
    fn blocks_round_up_and_a_zero_block_size_is_one() {
        assert_eq!(
            [
                blocks_for(0, 16),
                blocks_for(1, 16),
                blocks_for(16, 16),
                blocks_for(17, 16)
            ],
            [0, 1, 1, 2]
        );
        assert_eq!(blocks_for(5, 0), 5);
    }

    /// The paged engine's account grows by one block's K/V per block of
    /// pool, and its step buffers by whether activations are staged.
    #[test]
    fn the_paged_account_is_its_pool_plus_fixed_buffers() {
        let m = ModelSpec::preset("llama-2-7b").unwrap();
        let shape = PagedShape {
            block_size: 16,
            max_batch: 4,
            keep_activations: false,
            longest: 100,
        };
        assert_eq!(shape.max_tokens(), 112);
        assert_eq!(shape.stage_tokens(), 0);
        let (a, b) = (
            PagedBytes::new(&m, &shape, 10, 2),
            PagedBytes::new(&m, &shape, 11, 2),
        );
        assert_eq!(b.total() - a.total(), PagedBytes::per_block(&m, 16, 2));
        assert_eq!(a.fixed(), b.fixed());
        let keep = PagedShape {
            keep_activations: true,
            ..shape
        };
        assert_eq!(keep.stage_tokens(), 4 * 112);
        assert!(PagedBytes::new(&m, &keep, 10, 2).fixed() > a.fixed());
        // A budget below the buffers holds no block.
        assert_eq!(PagedBytes::blocks_within(&m, &shape, 2, a.fixed() - 1), 0);
    }
}
