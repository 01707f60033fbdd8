//! What the policies do to a sequence's blocks: swap out and in (with a
//! prefix recomputed from `X`), drop, offload, and the offloaded prefix a
//! decode step brings back into a staging region.

use kernels::{DeviceBuf, Event, Stream};

use super::{bad, At, PagedEngine, Recompute, Seq};
use crate::layer::{project, Proj};
use crate::{AtLayer, Result};

impl PagedEngine<'_> {
    /// Moves K/V of tokens `[t0, t1)` of `seq` in layers `layers` between
    /// its device blocks and the host store on `stream` (one copy per block,
    /// layer and kind).
    fn move_blocks(
        &self,
        seq: &Seq,
        (t0, t1): (usize, usize),
        layers: std::ops::Range<usize>,
        out: bool,
        stream: Stream,
    ) -> Result<u64> {
        let (be, bs) = (self.be, self.cfg.block_size);
        let kvd = self.model.spec().kv_dim();
        let mut bytes = 0;
        for li in layers {
            let mut t = t0;
            while t < t1 {
                let run = (bs - t % bs).min(t1 - t);
                let (dev, host) = (self.row(seq, t) * kvd, (seq.base + t) * kvd);
                for (pool, store) in [
                    (&self.k_pool[li], &self.host_k[li]),
                    (&self.v_pool[li], &self.host_v[li]),
                ] {
                    match out {
                        true => be.copy_d2h(stream, pool, dev, store, host, run * kvd),
                        false => be.copy_h2d(stream, store, host, pool, dev, run * kvd),
                    }
                    .at(li)?;
                }
                t += run;
            }
            bytes += self
                .model
                .spec()
                .kv_layer_bytes(t1.saturating_sub(t0), be.dtype().bytes());
        }
        Ok(bytes)
    }

    /// Preemption by swapping: K/V of tokens `[keep_from, cached)` go to the
    /// host (the first `keep_from` tokens, block-aligned, are left to be
    /// recomputed from `X` on resume), then every device block is freed.
    pub fn swap_out(&mut self, id: usize, keep_from: usize) -> Result<()> {
        let seq = self.seq(id)?.clone();
        let from = self.leading(id, keep_from, seq.cached)?;
        if from > 0 && !self.cfg.keep_activations {
            return Err(bad(
                "swap out",
                "recomputing on resume needs the activations kept".into(),
            ));
        }
        if seq.off > 0 {
            return Err(bad(
                "swap out",
                format!("request {id} has offloaded blocks"),
            ));
        }
        // Copy on the compute stream's order: its K/V are complete there.
        let ev = self.be.record(Stream::Compute)?;
        self.be.wait(Stream::Writeback, &ev)?;
        let all = 0..self.model.layers.len();
        self.counters.bytes_out +=
            self.move_blocks(&seq, (from, seq.cached), all, true, Stream::Writeback)?;
        // The blocks are reused only once their contents are out.
        let done = self.be.record(Stream::Writeback)?;
        self.be.wait(Stream::Compute, &done)?;
        self.be.wait(Stream::Copy, &done)?;
        let s = self.seqs.get_mut(&id).expect("checked above");
        self.free.append(&mut s.blocks);
        s.swapped = true;
        s.swapped_from = from;
        Ok(())
    }

    /// The leading `tokens` of a context of `cached` (the context at most)
    /// that `partial` recomputes, as the scheduler decided them: whole
    /// blocks, or the whole context. The engine takes the scheduler's count
    /// as it is, so the blocks it copies out are the blocks the scheduler
    /// counted (it used to round down again, copying out a partial last
    /// block the scheduler had kept).
    fn leading(&self, id: usize, tokens: usize, cached: usize) -> Result<usize> {
        let (t, bs) = (tokens.min(cached), self.cfg.block_size);
        match t == cached || t % bs == 0 {
            true => Ok(t),
            false => Err(bad(
                "partial recompute",
                format!("request {id}: {t} leading tokens of {cached} is not a whole number of {bs}-token blocks"),
            )),
        }
    }

    /// Preemption by dropping: frees the request's blocks and forgets its K/V.
    pub fn drop_kv(&mut self, id: usize) -> Result<()> {
        // Earlier work on the blocks finishes before anyone reuses them: all
        // of it is on the compute stream, which the next user follows.
        if let Some(s) = self.seqs.remove(&id) {
            self.free.extend(s.blocks);
        }
        Ok(())
    }

    /// Resumes a swapped-out request: fresh blocks for its context, tokens
    /// `[0, recompute)` recomputed from `X` (at least what was not swapped
    /// out), the rest swapped in; the two overlap (copy and compute streams).
    pub fn swap_in(&mut self, id: usize, recompute: usize) -> Result<()> {
        let mut seq = self.seq(id)?.clone();
        if !seq.swapped {
            return Err(bad("swap in", format!("request {id} was not swapped out")));
        }
        let bs = self.cfg.block_size;
        let r = self.leading(id, recompute.max(seq.swapped_from), seq.cached)?;
        if r > 0 && !self.cfg.keep_activations {
            return Err(bad(
                "swap in",
                "recomputing needs the activations kept".into(),
            ));
        }
        seq.blocks.clear();
        for _ in 0..plans::blocks_for(seq.cached, bs) {
            let b = self.take_block(id)?;
            seq.blocks.push(b);
        }
        let (be, m) = (self.be, self.model);
        let s = m.spec();
        let h = s.hidden_size;
        // The copy stream may write the new blocks only after their last
        // readers on the compute stream.
        let ev = be.record(Stream::Compute)?;
        be.wait(Stream::Copy, &ev)?;
        // Per layer: its `X` share, then its swapped K/V, on the copy
        // stream; the compute stream recomputes a layer once its `X` is in,
        // while the copy stream goes on with that layer's K/V.
        let mut used: Vec<Event> = Vec::new();
        for li in 0..m.layers.len() {
            if r > 0 {
                let xs = &self.x_stage[li % 2];
                if li >= 2 {
                    // The stage was read by layer li-2's GEMMs.
                    be.wait(Stream::Copy, &used[li - 2]).at(li)?;
                }
                be.copy_h2d(Stream::Copy, &self.host_x[li], seq.base * h, xs, 0, r * h)
                    .at(li)?;
                let landed = be.record(Stream::Copy).at(li)?;
                self.counters.bytes_in +=
                    self.move_blocks(&seq, (r, seq.cached), li..li + 1, false, Stream::Copy)?;
                be.wait(Stream::Compute, &landed).at(li)?;
                self.recompute_rows(li, &seq, xs, r)?;
                used.push(be.record(Stream::Compute).at(li)?);
            } else {
                self.counters.bytes_in +=
                    self.move_blocks(&seq, (r, seq.cached), li..li + 1, false, Stream::Copy)?;
            }
        }
        if r > 0 {
            self.counters.bytes_in += (r * h * m.layers.len()) as u64 * be.dtype().bytes() as u64;
            self.counters.tokens_recomputed += r as u64;
        }
        let done = be.record(Stream::Copy)?;
        be.wait(Stream::Compute, &done)?;
        seq.swapped = false;
        seq.swapped_from = 0;
        self.seqs.insert(id, seq);
        Ok(())
    }

    /// K/V of tokens `[0, r)` of layer `li` from `X` rows in `xs`, into the
    /// sequence's blocks (compute stream).
    fn recompute_rows(&self, li: usize, seq: &Seq, xs: &DeviceBuf, r: usize) -> Result<()> {
        let (be, m) = (self.be, self.model);
        let (kt, vt) = (&self.k_gather[0], &self.v_gather[0]);
        project(
            be,
            m,
            li,
            Proj::K,
            (xs, 0),
            (kt, 0),
            r,
            Some((&self.ramp, 0, &m.rope)),
        )?;
        project(be, m, li, Proj::V, (xs, 0), (vt, 0), r, None)?;
        self.store_rows(li, seq, kt, vt, 0, r)
    }

    /// `offload`: the request's `n` oldest device blocks move to the host
    /// store and are freed; it keeps decoding with them there.
    pub fn offload(&mut self, id: usize, n: usize) -> Result<()> {
        let seq = self.seq(id)?.clone();
        let bs = self.cfg.block_size;
        if n > seq.blocks.len() {
            return Err(bad(
                "offload",
                format!(
                    "request {id} has {} device blocks, not {n}",
                    seq.blocks.len()
                ),
            ));
        }
        let t0 = seq.off * bs;
        let t1 = ((seq.off + n) * bs).min(seq.cached);
        let ev = self.be.record(Stream::Compute)?;
        self.be.wait(Stream::Writeback, &ev)?;
        let all = 0..self.model.layers.len();
        self.counters.bytes_out +=
            self.move_blocks(&seq, (t0, t1), all, true, Stream::Writeback)?;
        let done = self.be.record(Stream::Writeback)?;
        self.be.wait(Stream::Compute, &done)?;
        self.be.wait(Stream::Copy, &done)?;
        let s = self.seqs.get_mut(&id).expect("checked above");
        let gone: Vec<u32> = s.blocks.drain(..n).collect();
        s.off += n;
        self.free.extend(gone);
        Ok(())
    }

    /// Issues, on the copy stream, what layer `li` of a decode step needs of
    /// its offloaded sequences `(batch index, tokens recomputed)`: `X` of
    /// each one's first `l` tokens (in batch order, into the layer parity's
    /// stage) and K/V of the rest of its prefix, straight into its row of the
    /// parity's attention buffers (`cap` tokens a row), once the layer two
    /// before is done with them.
    pub(super) fn issue_prefixes(
        &mut self,
        li: usize,
        seqs: &[At],
        offloaded: &[(usize, usize)],
        cap: usize,
    ) -> Result<()> {
        let be = self.be;
        let s = self.model.spec();
        let (h, kvd, bs) = (s.hidden_size, s.kv_dim(), self.cfg.block_size);
        let p = li % 2;
        if let Some(ev) = self.stage_free[p].take() {
            be.wait(Stream::Copy, &ev).at(li)?;
        }
        let esz = be.dtype().bytes();
        let mut x_row = 0;
        for &(i, l) in offloaded {
            let seq = seqs[i];
            let o = seq.off * bs;
            if l > 0 {
                let (xs, n) = (&self.x_stage[p], l * h);
                be.copy_h2d(
                    Stream::Copy,
                    &self.host_x[li],
                    seq.base * h,
                    xs,
                    x_row * h,
                    n,
                )
                .at(li)?;
                self.counters.bytes_in += s.x_layer_bytes(l, esz);
                x_row += l;
            }
            if o > l {
                let (src, dst, n) = ((seq.base + l) * kvd, (i * cap + l) * kvd, (o - l) * kvd);
                for (store, buf) in [
                    (&self.host_k[li], &self.k_gather[p]),
                    (&self.host_v[li], &self.v_gather[p]),
                ] {
                    be.copy_h2d(Stream::Copy, store, src, buf, dst, n).at(li)?;
                }
                self.counters.bytes_in += s.kv_layer_bytes(o - l, esz);
            }
        }
        self.stage_ready[p] = Some(be.record(Stream::Copy).at(li)?);
        Ok(())
    }

    /// Waits for layer `li`'s prefixes ([`PagedEngine::issue_prefixes`]) and
    /// recomputes K/V of the rows `rec` names from their `X`: one GEMM per
    /// kind for every offloaded sequence together, RoPE at each row's
    /// position, and a scatter into the rows of the attention buffers
    /// (compute stream).
    pub(super) fn finish_prefixes(&mut self, li: usize, rec: &Recompute) -> Result<()> {
        let (be, m) = (self.be, self.model);
        let s = m.spec();
        let kvd = s.kv_dim();
        let p = li % 2;
        if let Some(ev) = self.stage_ready[p].take() {
            be.wait(Stream::Compute, &ev).at(li)?;
        }
        let r = rec.rows;
        if r == 0 {
            return Ok(());
        }
        let (xs, t) = (&self.x_stage[p], &self.recomputed);
        let pos = Some((&self.step, rec.pos, &m.rope));
        project(be, m, li, Proj::K, (xs, 0), (t, 0), r, pos)?;
        be.scatter_rows(t, 0, &self.k_gather[p], &self.step, rec.dst, r, kvd)
            .at(li)?;
        project(be, m, li, Proj::V, (xs, 0), (t, 0), r, None)?;
        be.scatter_rows(t, 0, &self.v_gather[p], &self.step, rec.dst, r, kvd)
            .at(li)?;
        self.counters.tokens_recomputed += r as u64;
        Ok(())
    }
}
