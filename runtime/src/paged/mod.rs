//! The serving engine's mechanics: a paged K/V cache on the device, a host
//! store per request, and ragged batches of sequences at their own lengths.
//!
//! The device holds, per layer, one pool of K and one of V of
//! `capacity_blocks` blocks of `block_size` tokens. Each sequence has a block
//! table: its leading `off` blocks live on the host (offloaded), the rest on
//! the device.
//!
//! The host holds, per layer, K and V (and, when activations are kept, the
//! normalised layer inputs `X`) for every token of every request, each
//! request at its own fixed region: where swapped-out blocks go, where an
//! offloaded prefix stays, and where `X` is kept for recomputation.
//!
//! What this engine does is decided elsewhere (the CLI drives it from
//! `scheduler::serving`): it prefills, decodes a ragged batch, swaps out,
//! swaps in (recomputing a prefix from `X`), offloads and releases, each on
//! the device, and counts the bytes and tokens each costs.
//!
//! A decode step runs every sequence's new token through the layers as one
//! batch (one GEMM per projection over all rows, RoPE at each row's own
//! position, each row's new K/V into its block with one `scatter_rows` per
//! kind). The batch's blocks are gathered by their block tables
//! (`gather_rows`, one call per kind) into a `[batch, cap, kv_dim]` buffer,
//! `cap` the longest context's blocks, and one `attention_ragged` call
//! attends every row at its own length.
//!
//! An offloaded prefix crosses the link on the copy stream straight into its
//! row of that buffer, two layers ahead of the compute stream (the layers
//! alternate between two such buffers). Of each prefix, the share the plan
//! recomputes crosses as `X` instead, and the compute stream turns every
//! offloaded sequence's `X` into K/V with one GEMM per kind, a RoPE and a
//! scatter into the rows attention reads.

use std::collections::HashMap;

use kernels::{Backend, DeviceBuf, Event, HostBuf, IdBuf, Stream};

use crate::executor::{attn_shape, head, Activations};
use crate::generate::Sampling;
use crate::layer::{project, Proj};

mod arena;
mod evict;
use crate::model::Model;
use crate::{AtLayer, Result, RuntimeError};

/// The shape of the cache and of the host store.
#[derive(Clone, Debug, PartialEq)]
pub struct PagedConfig {
    /// Tokens per block.
    pub block_size: usize,
    /// Device blocks for K/V (the cache's capacity).
    pub capacity_blocks: usize,
    /// The most sequences in one decode step.
    pub max_batch: usize,
    /// Keep every token's `X` on the host (for recomputing K/V from it).
    pub keep_activations: bool,
    /// The most tokens one request may hold (prompt plus output): what a
    /// step's gathered K/V hold per sequence.
    pub max_request_tokens: usize,
    /// Tokens the host store holds for the requests present at once, each
    /// request's region whole blocks ([`PagedEngine::add_request`]).
    pub host_tokens: usize,
}

impl PagedConfig {
    /// What the engine's step buffers are sized by (`plans::PagedBytes`).
    pub fn shape(&self) -> plans::PagedShape {
        plans::PagedShape {
            block_size: self.block_size,
            max_batch: self.max_batch,
            keep_activations: self.keep_activations,
            longest: self.max_request_tokens.max(1),
        }
    }

    /// The host tokens that hold requests of `request_tokens` tokens all at
    /// once (each region whole blocks of `block_size`).
    pub fn host_tokens_for(request_tokens: &[usize], block_size: usize) -> usize {
        request_tokens.iter().fold(0usize, |a, &t| {
            a.saturating_add(plans::blocks_for(t, block_size).saturating_mul(block_size))
        })
    }
}

/// Bytes and tokens the engine has moved or computed, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PagedCounters {
    /// K/V bytes copied to the host (swap-out, offload).
    pub bytes_out: u64,
    /// K/V and `X` bytes copied to the device (swap-in, offloaded prefixes).
    pub bytes_in: u64,
    /// `X` bytes written back to the host.
    pub bytes_x_out: u64,
    /// Tokens run through the whole model by a prefill (first or again).
    pub tokens_prefilled: u64,
    /// Tokens whose K/V were recomputed from `X`.
    pub tokens_recomputed: u64,
    /// Tokens decoded.
    pub tokens_decoded: u64,
}

#[derive(Clone, Debug)]
struct Seq {
    /// First token of this request's region in the host store.
    base: usize,
    /// Device block ids of blocks `off..`.
    blocks: Vec<u32>,
    /// Leading blocks on the host (offloaded).
    off: usize,
    /// Tokens whose K/V exist (on the device, or on the host after a swap).
    cached: usize,
    /// The token to feed next.
    last: u32,
    /// K/V of `[swapped_from, cached)` are on the host after a swap-out.
    swapped: bool,
    /// K/V of `[0, swapped_from)` were not copied out (to be recomputed from `X`).
    swapped_from: usize,
}

/// A decode step's rows recomputed from `X` (every offloaded sequence's
/// share, in batch order): how many, and where the step's id buffer holds
/// their positions and their rows of the attention buffer.
#[derive(Clone, Copy, Debug)]
struct Recompute {
    rows: usize,
    pos: usize,
    dst: usize,
}

/// What a decode step needs of a sequence, copied out of its state.
#[derive(Clone, Copy, Debug)]
struct At {
    base: usize,
    off: usize,
    cached: usize,
    /// Where its device blocks start in the step's id buffer.
    table: usize,
    /// Its device blocks.
    blocks: usize,
}

/// The paged cache and the buffers of a ragged decode step.
pub struct PagedEngine<'a> {
    be: &'a Backend,
    model: &'a Model,
    cfg: PagedConfig,
    /// Each request's region of the host store: its first token and its
    /// length in tokens, taken from `arena`.
    regions: HashMap<usize, (usize, usize)>,
    arena: arena::Arena,
    k_pool: Vec<DeviceBuf>,
    v_pool: Vec<DeviceBuf>,
    host_k: Vec<HostBuf>,
    host_v: Vec<HostBuf>,
    host_x: Vec<HostBuf>,
    free: Vec<u32>,
    seqs: HashMap<usize, Seq>,
    // Decode-step buffers, `max_batch` rows.
    /// Per step: ids, positions, new-token pool rows, lengths (`max_batch`
    /// each), then every sequence's gather table (staging ids, then its
    /// blocks), then the batch's tables padded to the widest with
    /// [`kernels::SKIP_ROW`] (an offloaded sequence's row all skipped: its
    /// prefix is gathered alone, when its staging region is filled).
    step: IdBuf,
    /// The host side of `step`, kept so a step allocates no buffer for it.
    step_host: Vec<u32>,
    /// Positions `0..max_tokens` (RoPE of recomputed rows).
    ramp: IdBuf,
    /// The decode step's activations (`max_batch` rows), and its layer
    /// inputs: one per layer when they are written back to the host.
    act: Activations,
    xn: Vec<DeviceBuf>,
    k_new: DeviceBuf,
    v_new: DeviceBuf,
    /// What attention reads, `[max_batch, max_tokens, kv_dim]`, one pair per
    /// layer parity (the copy stream fills the next layer's while this one
    /// computes).
    k_gather: [DeviceBuf; 2],
    v_gather: [DeviceBuf; 2],
    /// `X` rows to recompute K/V from, per layer parity (a swap-in's, or a
    /// step's offloaded prefixes'), and the K or V recomputed from them.
    x_stage: [DeviceBuf; 2],
    recomputed: DeviceBuf,
    logits: DeviceBuf,
    /// Per layer parity: the event after the attention that last read its
    /// buffers.
    stage_free: [Option<Event>; 2],
    /// Per layer parity: the event after the copies that filled its buffers.
    stage_ready: [Option<Event>; 2],
    /// Requests that sample rather than take the argmax: how, and how many
    /// tokens each has produced (the draw's step, so a request's draws do
    /// not depend on the batch it runs in).
    draws: HashMap<usize, (Sampling, u64)>,
    pub counters: PagedCounters,
}

fn bad(what: &str, reason: String) -> RuntimeError {
    RuntimeError::Request {
        what: what.to_string(),
        reason,
    }
}

impl<'a> PagedEngine<'a> {
    /// Allocates the device pools, the host store and the step buffers.
    pub fn new(be: &'a Backend, model: &'a Model, cfg: PagedConfig) -> Result<Self> {
        let s = model.spec();
        if let Some(plans::RopeScaling::Dynamic { .. }) = s.arch.rope_scaling {
            // Each request's keys turn by the base of its own prompt's
            // length; the engine has one table for every request.
            return Err(bad(
                "paged cache",
                format!(
                    "{} uses dynamic NTK RoPE, whose rotation depends on each request's prompt length; serve it with `kvpr run` (one prompt length per batch)",
                    s.name
                ),
            ));
        }
        let (h, kvd, nl) = (s.hidden_size, s.kv_dim(), s.n_layers);
        let bs = cfg.block_size;
        if bs == 0 || cfg.capacity_blocks == 0 || cfg.max_batch == 0 {
            return Err(bad(
                "paged cache",
                "block size, capacity and batch must be at least 1".into(),
            ));
        }
        let shape = cfg.shape();
        let max_tokens = shape.max_tokens();
        let host_tokens = cfg.host_tokens;
        let esz = be.dtype().bytes();
        let x_tokens = if cfg.keep_activations { host_tokens } else { 0 };
        crate::check_memory(
            "the serving host store (every request's K/V, and X when kept)",
            s.store_bytes(x_tokens, host_tokens, esz),
            "serve fewer or shorter requests",
        )?;
        // Block ids are u32; sizes past usize are refused, not wrapped.
        let pool_tokens = u32::try_from(cfg.capacity_blocks)
            .ok()
            .and_then(|_| cfg.capacity_blocks.checked_mul(bs))
            .ok_or_else(|| {
                bad(
                    "paged cache",
                    format!(
                        "{} blocks of {bs} tokens is more than any device holds",
                        cfg.capacity_blocks
                    ),
                )
            })?;
        let stage_tokens = shape.stage_tokens();
        crate::check_device_memory(
            be,
            &format!(
                "the paged K/V cache ({} blocks of {bs} tokens) and its step buffers",
                cfg.capacity_blocks
            ),
            plans::PagedBytes::new(s, &shape, cfg.capacity_blocks, esz).total(),
            "use a smaller capacity, block size or batch",
        )?;
        let a = |n: usize| be.alloc(n.max(1));
        let per_layer =
            |n: usize| -> Result<Vec<DeviceBuf>> { (0..nl).map(|_| Ok(a(n)?)).collect() };
        let host = |n: usize| -> Result<Vec<HostBuf>> {
            (0..nl).map(|_| Ok(be.alloc_host(n.max(1))?)).collect()
        };
        let b = cfg.max_batch;
        let free = (0..cfg.capacity_blocks as u32).rev().collect();
        let ramp = be.alloc_ids(max_tokens)?;
        be.write_ids(&ramp, 0, &(0..max_tokens as u32).collect::<Vec<_>>())?;
        Ok(PagedEngine {
            be,
            model,
            regions: HashMap::new(),
            arena: arena::Arena::new(host_tokens),
            k_pool: per_layer(pool_tokens * kvd)?,
            v_pool: per_layer(pool_tokens * kvd)?,
            host_k: host(host_tokens * kvd)?,
            host_v: host(host_tokens * kvd)?,
            host_x: if cfg.keep_activations {
                host(host_tokens * h)?
            } else {
                Vec::new()
            },
            free,
            seqs: HashMap::new(),
            step: be.alloc_ids(shape.step_ids())?,
            step_host: Vec::with_capacity(shape.step_ids()),
            ramp,
            act: Activations::new(be, s, b)?,
            xn: if cfg.keep_activations {
                per_layer(b * h)?
            } else {
                vec![a(b * h)?]
            },

            k_new: a(b * kvd)?,
            v_new: a(b * kvd)?,

            k_gather: [a(b * max_tokens * kvd)?, a(b * max_tokens * kvd)?],
            v_gather: [a(b * max_tokens * kvd)?, a(b * max_tokens * kvd)?],
            x_stage: [a(stage_tokens * h)?, a(stage_tokens * h)?],
            recomputed: a(stage_tokens * kvd)?,
            logits: a(b * s.vocab_size)?,
            stage_free: [None, None],
            stage_ready: [None, None],
            draws: HashMap::new(),
            counters: PagedCounters::default(),
            cfg,
        })
    }

    /// Device blocks in use.
    pub fn blocks_used(&self) -> usize {
        self.cfg.capacity_blocks - self.free.len()
    }

    /// The sequence's tokens with K/V, and its offloaded leading blocks.
    pub fn cached(&self, id: usize) -> Option<(usize, usize)> {
        self.seqs.get(&id).map(|s| (s.cached, s.off))
    }

    fn seq(&self, id: usize) -> Result<&Seq> {
        self.seqs
            .get(&id)
            .ok_or_else(|| bad("serving", format!("request {id} is not in the cache")))
    }

    fn take_block(&mut self, id: usize) -> Result<u32> {
        self.free.pop().ok_or_else(|| {
            bad(
                "paged cache",
                format!(
                    "request {id} needs a block and all {} are in use (the scheduler's accounting and the cache disagree)",
                    self.cfg.capacity_blocks
                ),
            )
        })
    }

    /// Pool row (token index in the pool) of token `t` of a sequence.
    fn row(&self, seq: &Seq, t: usize) -> usize {
        let bs = self.cfg.block_size;
        seq.blocks[t / bs - seq.off] as usize * bs + t % bs
    }

    /// Takes a region of the host store for request `id`, which will hold
    /// up to `tokens` tokens (prompt plus output). Refused where `tokens` is
    /// more than the engine's `max_request_tokens`, where `id` is present
    /// already, or where the host store has no free region that large (the
    /// caller waits for a request to finish, or refuses this one).
    pub fn add_request(&mut self, id: usize, tokens: usize) -> Result<()> {
        let (bs, max) = (self.cfg.block_size, self.cfg.max_request_tokens);
        if tokens == 0 || tokens > max {
            return Err(bad(
                "serving",
                format!("request {id} of {tokens} tokens: this engine takes 1 to {max}"),
            ));
        }
        if self.regions.contains_key(&id) {
            return Err(bad("serving", format!("request {id} is present already")));
        }
        let len = plans::blocks_for(tokens, bs) * bs;
        let start = self
            .arena
            .take(len)
            .ok_or_else(|| RuntimeError::HostStoreFull {
                id,
                tokens: len,
                free: self.arena.available(),
                total: self.arena.len(),
            })?;
        self.regions.insert(id, (start, len));
        Ok(())
    }

    /// Host tokens free for new requests, and in all.
    pub fn host_tokens_free(&self) -> (usize, usize) {
        (self.arena.available(), self.arena.len())
    }

    /// How request `id` (added, not yet prefilled) chooses its tokens;
    /// greedy unless set. A sampling request's `n`-th token is drawn with
    /// step `n` and row 0 of the sampler's noise, whatever batch it runs
    /// in, so its tokens depend only on its prompt and its [`Sampling`].
    pub fn set_sampling(&mut self, id: usize, sampling: Sampling) -> Result<()> {
        sampling.validate()?;
        if !self.regions.contains_key(&id) {
            return Err(bad("serving", format!("no request {id}")));
        }
        match sampling.is_greedy() {
            true => self.draws.remove(&id),
            false => self.draws.insert(id, (sampling, 0)),
        };
        Ok(())
    }

    /// After the argmax of `ids.len()` rows of `logits` into `step[0..]`:
    /// draws again the rows whose request samples (`ids[i]` the request of
    /// row `i`). The sampler reads one row at a time from row 0: row 0's
    /// draw is taken first, then each later row is copied over row 0 (its
    /// logits are spent by then) and drawn.
    fn draw_rows(&mut self, ids: &[usize]) -> Result<()> {
        let (be, vocab) = (self.be, self.model.spec().vocab_size);
        for (i, id) in ids.iter().enumerate() {
            let Some((sampling, n)) = self.draws.get_mut(id) else {
                continue;
            };
            let Some(args) = sampling.args(*n) else {
                continue;
            };
            *n += 1;
            if i > 0 {
                be.copy_d2d(
                    Stream::Compute,
                    &self.logits,
                    i * vocab,
                    &self.logits,
                    0,
                    vocab,
                )?;
            }
            be.sample(&self.logits, 1, vocab, &self.step, i, args)?;
        }
        Ok(())
    }

    fn check_request(&self, id: usize, tokens: usize) -> Result<usize> {
        match self.regions.get(&id) {
            Some(&(start, max)) if tokens <= max => Ok(start),
            Some(&(_, max)) => Err(bad(
                "serving",
                format!("request {id} would hold {tokens} tokens, more than its {max}"),
            )),
            None => Err(bad("serving", format!("no request {id}"))),
        }
    }

    /// Runs `tokens` (a prompt, or a prompt and what was generated from it)
    /// through the model at positions `0..n` for request `id`, stores their
    /// K/V in fresh device blocks (and `X` on the host when kept), and
    /// returns the next token (the argmax, or drawn: [`Self::set_sampling`]).
    pub fn prefill(&mut self, id: usize, tokens: &[u32]) -> Result<u32> {
        self.prefill_offloaded(id, tokens, 0)
    }

    /// [`PagedEngine::prefill`] with the first `off` blocks of the prompt's
    /// K/V written straight to the host store, as [`PagedEngine::offload`]
    /// would leave them: the prompt may be larger than the device's whole
    /// cache. Its K/V are computed a layer at a time in prefill's own
    /// buffers, so only the blocks from `off` on take device blocks. At
    /// least the last block stays on the device.
    pub fn prefill_offloaded(&mut self, id: usize, tokens: &[u32], off: usize) -> Result<u32> {
        let (be, m) = (self.be, self.model);
        let s = m.spec();
        let (h, kvd, bs) = (s.hidden_size, s.kv_dim(), self.cfg.block_size);
        let p = tokens.len();
        let base = self.check_request(id, p)?;
        if p == 0 {
            return Err(bad("prefill", format!("request {id} has no tokens")));
        }
        let blocks = plans::blocks_for(p, bs);
        if off > 0 && (off >= blocks || !self.cfg.keep_activations) {
            return Err(bad(
                "prefill",
                format!(
                    "request {id}: {off} of its {blocks} blocks on the host; at most {} may be, and only where activations are kept (offload)",
                    blocks.saturating_sub(1)
                ),
            ));
        }
        if let Some(old) = self.seqs.remove(&id) {
            self.free.extend(old.blocks);
        }
        let vocab = s.vocab_size;
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(bad(
                "prefill",
                format!("token id {t} is outside the vocabulary of {vocab}"),
            ));
        }
        let mut seq = Seq {
            base,
            blocks: Vec::new(),
            off,
            cached: p,
            last: 0,
            swapped: false,
            swapped_from: 0,
        };
        for _ in off..blocks {
            let b = self.take_block(id)?;
            seq.blocks.push(b);
        }
        // Tokens `[0, t0)` go to the host store, the rest to device blocks.
        let t0 = off * bs;
        let esz = be.dtype().bytes() as u64;
        // Prefill's activations are its own (not the measured step's).
        let act = Activations::new(be, s, p)?;
        let Activations {
            hidden, xn, q, att, ..
        } = &act;
        let (kt, vt) = (be.alloc(p * kvd)?, be.alloc(p * kvd)?);
        let ids = be.alloc_ids(p)?;
        be.write_ids(&ids, 0, tokens)?;
        be.embedding(&m.embed_tokens, &ids, 0, hidden, p, h)?;
        let eps = s.norm_eps as f32;
        for (li, l) in m.layers.iter().enumerate() {
            be.rmsnorm(hidden, &l.input_layernorm, xn, p, h, eps)
                .at(li)?;
            let pos = Some((&self.ramp, 0, &m.rope));
            project(be, m, li, Proj::Q, (xn, 0), (q, 0), p, pos)?;
            project(be, m, li, Proj::K, (xn, 0), (&kt, 0), p, pos)?;
            project(be, m, li, Proj::V, (xn, 0), (&vt, 0), p, None)?;
            let shape = attn_shape(s, 1, p, 0, p);
            be.attention(q, &kt, &vt, att, shape).at(li)?;
            self.store_rows(li, &seq, &kt, &vt, t0, p - t0)?;
            if self.cfg.keep_activations {
                // `xn` is scratch again in the MLP, and `kt`, `vt` in the
                // next layer: the copies land first.
                let ev = be.record(Stream::Compute).at(li)?;
                be.wait(Stream::Writeback, &ev).at(li)?;
                let at = seq.base * h;
                be.copy_d2h(Stream::Writeback, xn, 0, &self.host_x[li], at, p * h)
                    .at(li)?;
                if t0 > 0 {
                    let at = seq.base * kvd;
                    be.copy_d2h(Stream::Writeback, &kt, 0, &self.host_k[li], at, t0 * kvd)
                        .at(li)?;
                    be.copy_d2h(Stream::Writeback, &vt, 0, &self.host_v[li], at, t0 * kvd)
                        .at(li)?;
                    self.counters.bytes_out += 2 * (t0 * kvd) as u64 * esz;
                }
                let done = be.record(Stream::Writeback).at(li)?;
                be.wait(Stream::Compute, &done).at(li)?;
                self.counters.bytes_x_out += (p * h) as u64 * esz;
            }
            act.finish_layer(be, m, li, p)?;
        }
        let d = &self.act;
        be.copy_d2d(Stream::Compute, hidden, (p - 1) * h, &d.hidden, 0, h)?;
        head(be, m, &d.hidden, &d.tmp, &self.logits, 1)?;
        be.argmax(&self.logits, 1, vocab, &self.step, 0)?;
        self.draw_rows(&[id])?;
        let next = be.read_ids(&self.step, 0, 1)?[0];
        seq.last = next;
        self.seqs.insert(id, seq);
        self.counters.tokens_prefilled += p as u64;
        Ok(next)
    }

    /// Copies K/V of tokens `t0..t0+n` of `seq` into its device blocks, one
    /// copy per block, on the compute stream, from `k`/`v` (`[_, kv_dim]`)
    /// whose row `t` holds token `t`.
    fn store_rows(
        &self,
        li: usize,
        seq: &Seq,
        k: &DeviceBuf,
        v: &DeviceBuf,
        t0: usize,
        n: usize,
    ) -> Result<()> {
        let (be, bs) = (self.be, self.cfg.block_size);
        let kvd = self.model.spec().kv_dim();
        let mut t = t0;
        while t < t0 + n {
            let run = (bs - t % bs).min(t0 + n - t);
            let (src, dst) = (t * kvd, self.row(seq, t) * kvd);
            be.copy_d2d(Stream::Compute, k, src, &self.k_pool[li], dst, run * kvd)
                .at(li)?;
            be.copy_d2d(Stream::Compute, v, src, &self.v_pool[li], dst, run * kvd)
                .at(li)?;
            t += run;
        }
        Ok(())
    }

    /// Releases a finished (or aborted) request: its device blocks and its
    /// region of the host store.
    pub fn finish(&mut self, id: usize) {
        if let Some(s) = self.seqs.remove(&id) {
            self.free.extend(s.blocks);
        }
        if let Some((start, len)) = self.regions.remove(&id) {
            self.arena.give(start, len);
        }
        self.draws.remove(&id);
    }

    /// One decode step of a ragged batch: each `(id, l)` feeds its last token
    /// at its own position; of an offloaded prefix, `l` tokens are recomputed
    /// from `X` and the rest transferred. Returns each sequence's next
    /// token, in order.
    pub fn decode(&mut self, batch: &[(usize, usize)]) -> Result<Vec<u32>> {
        let (be, m) = (self.be, self.model);
        let s = m.spec();
        let (h, kvd, bs) = (s.hidden_size, s.kv_dim(), self.cfg.block_size);
        let b = batch.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        if b > self.cfg.max_batch {
            return Err(bad(
                "decode",
                format!(
                    "{b} sequences, more than the batch of {}",
                    self.cfg.max_batch
                ),
            ));
        }
        // Each sequence's block for its new token; then one host buffer for
        // the step: ids, positions, new-token pool rows and lengths (`b`
        // each), then every sequence's device blocks, then the batch's
        // gather table, then the rows recomputed from `X`.
        let (pos_off, slot_off, len_off) = (b, 2 * b, 3 * b);
        let mut step = std::mem::take(&mut self.step_host);
        step.clear();
        step.resize(4 * b, 0);
        let mut seqs: Vec<At> = Vec::with_capacity(b);
        let mut cap_blocks = 0;
        for (i, &(id, _)) in batch.iter().enumerate() {
            let seq = self.seq(id)?;
            if seq.swapped {
                return Err(bad("decode", format!("request {id} is swapped out")));
            }
            let n = seq.cached;
            self.check_request(id, n + 1)?;
            if n / bs >= seq.off + seq.blocks.len() {
                let blk = self.take_block(id)?;
                self.seqs
                    .get_mut(&id)
                    .expect("found above")
                    .blocks
                    .push(blk);
            }
            let seq = self.seq(id)?;
            step[i] = seq.last;
            step[pos_off + i] = n as u32;
            step[slot_off + i] = self.row(seq, n) as u32;
            step[len_off + i] = n as u32 + 1;
            let table = step.len();
            step.extend(&seq.blocks);
            cap_blocks = cap_blocks.max(seq.off + seq.blocks.len());
            seqs.push(At {
                base: seq.base,
                off: seq.off,
                cached: n,
                table,
                blocks: seq.blocks.len(),
            });
        }
        // Attention reads `[b, cap, kv_dim]`: `cap` the longest context's blocks.
        let cap = cap_blocks * bs;
        // The gather table: row `i` skips the offloaded prefix (it crosses
        // the link straight into the attention buffer), then takes the
        // sequence's device blocks.
        let padded = step.len();
        for q in &seqs {
            let row = step.len();
            step.resize(row + q.off, kernels::SKIP_ROW);
            step.extend_from_within(q.table..q.table + q.blocks);
            step.resize(row + cap_blocks, kernels::SKIP_ROW);
        }
        // The offloaded sequences (batch index, tokens recomputed from `X`),
        // and where those rows go: their positions, then their rows of the
        // attention buffer.
        let offloaded: Vec<(usize, usize)> = seqs
            .iter()
            .zip(batch)
            .enumerate()
            .filter(|(_, (q, _))| q.off > 0)
            .map(|(i, (q, &(_, l)))| match self.cfg.keep_activations {
                true => (i, l.min(q.off * bs)),
                false => (i, 0),
            })
            .collect();
        let rec = Recompute {
            rows: offloaded.iter().map(|&(_, l)| l).sum(),
            pos: step.len(),
            dst: step.len() + offloaded.iter().map(|&(_, l)| l).sum::<usize>(),
        };
        for &(_, l) in &offloaded {
            step.extend(0..l as u32);
        }
        for &(i, l) in &offloaded {
            step.extend((0..l).map(|j| (i * cap + j) as u32));
        }
        be.write_ids(&self.step, 0, &step)?;
        self.step_host = step;
        // Earlier writebacks land before this step overwrites their sources,
        // and the copy stream writes the attention buffers only after
        // everything the compute stream did with them before this step.
        let wb = be.record(Stream::Writeback)?;
        be.wait(Stream::Compute, &wb)?;
        be.wait(Stream::Copy, &wb)?;
        if !offloaded.is_empty() {
            let before = be.record(Stream::Compute)?;
            be.wait(Stream::Copy, &before)?;
        }
        let eps = s.norm_eps as f32;
        be.embedding(&m.embed_tokens, &self.step, 0, &self.act.hidden, b, h)?;
        let esz = be.dtype().bytes() as u64;
        let nl = m.layers.len();
        // The copy stream brings each layer's offloaded prefixes two layers
        // ahead of the compute stream, the layers alternating between two
        // attention buffers.
        for li in 0..nl.min(2) {
            self.issue_prefixes(li, &seqs, &offloaded, cap)?;
        }
        for li in 0..nl {
            let g = li % 2;
            let l = &m.layers[li];
            let xn = &self.xn[li % self.xn.len()];
            be.rmsnorm(&self.act.hidden, &l.input_layernorm, xn, b, h, eps)
                .at(li)?;
            let pos = Some((&self.step, pos_off, &m.rope));
            project(be, m, li, Proj::Q, (xn, 0), (&self.act.q, 0), b, pos)?;
            project(be, m, li, Proj::K, (xn, 0), (&self.k_new, 0), b, pos)?;
            project(be, m, li, Proj::V, (xn, 0), (&self.v_new, 0), b, None)?;
            // Each row's new K/V into its block, one call per kind.
            be.scatter_rows(
                &self.k_new,
                0,
                &self.k_pool[li],
                &self.step,
                slot_off,
                b,
                kvd,
            )
            .at(li)?;
            be.scatter_rows(
                &self.v_new,
                0,
                &self.v_pool[li],
                &self.step,
                slot_off,
                b,
                kvd,
            )
            .at(li)?;
            if self.cfg.keep_activations {
                let ev = be.record(Stream::Compute).at(li)?;
                be.wait(Stream::Writeback, &ev).at(li)?;
                for (i, seq) in seqs.iter().enumerate() {
                    let dst = (seq.base + seq.cached) * h;
                    be.copy_d2h(Stream::Writeback, xn, i * h, &self.host_x[li], dst, h)
                        .at(li)?;
                }
                self.counters.bytes_x_out += (b * h) as u64 * esz;
            }
            // Device blocks into the buffer attention reads (`[b, cap, kvd]`),
            // the whole batch at once; then the offloaded prefixes: the
            // transferred rows are in, the recomputed ones are computed.
            let (width, rows) = (bs * kvd, b * cap_blocks);
            for (pool, buf) in [
                (&self.k_pool[li], &self.k_gather[g]),
                (&self.v_pool[li], &self.v_gather[g]),
            ] {
                be.gather_rows(pool, &self.step, padded, buf, 0, rows, width)
                    .at(li)?;
            }
            if !offloaded.is_empty() {
                self.finish_prefixes(li, &rec)?;
            }
            let (kg, vg) = (&self.k_gather[g], &self.v_gather[g]);
            let shape = attn_shape(s, b, 1, 0, cap);
            be.attention_ragged(
                &self.act.q,
                kg,
                vg,
                &self.act.att,
                shape,
                &self.step,
                len_off,
            )
            .at(li)?;
            if !offloaded.is_empty() && li + 2 < nl {
                // This layer's buffers are free again: layer li + 2's prefixes.
                self.stage_free[li % 2] = Some(be.record(Stream::Compute).at(li)?);
                self.issue_prefixes(li + 2, &seqs, &offloaded, cap)?;
            }
            // The layer input may still be owed to the writeback: the MLP
            // normalises into its own buffer.
            self.act.finish_layer(be, m, li, b)?;
        }
        head(be, m, &self.act.hidden, &self.act.tmp, &self.logits, b)?;
        be.argmax(&self.logits, b, s.vocab_size, &self.step, 0)?;
        if !self.draws.is_empty() {
            let ids: Vec<usize> = batch.iter().map(|r| r.0).collect();
            self.draw_rows(&ids)?;
        }
        let next = be.read_ids(&self.step, 0, b)?;
        for (&(id, _), &t) in batch.iter().zip(&next) {
            let seq = self.seqs.get_mut(&id).expect("checked above");
            seq.cached += 1;
            seq.last = t;
        }
        self.counters.tokens_decoded += b as u64;
        Ok(next)
    }
}
