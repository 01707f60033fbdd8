//! The decode executor: runs prefill and decode steps on a backend with the
//! KV cache in host memory, exactly as a plan splits each context `s`:
//! `[0, g)` resident on the device, `[g, g+l)` recomputed from stored `X`,
//! `[g+l, s)` transferred as K/V.
//!
//! Per layer, the copy stream brings (in order) the resident prefix (a
//! device-to-device copy from the resident area into the staging buffer: the
//! staging buffers are shared by all layers, two in flight, so the prefix is
//! copied in each time rather than laid out once), then `X[g, g+l)` in `c`
//! chunks with an event per chunk, then K/V `[g+l, s)`, then an event. The
//! compute stream recomputes each chunk as soon as its event fires, waits for
//! the K/V event, and only then issues the next layer's copies, so layer
//! i+1's transfers overlap layer i's attention and MLP (the cost model's
//! pipeline). The new token's `X` and K/V go to the host store on the
//! writeback stream (and to the resident area if its position is below the
//! largest resident prefix).
//!
//! Recompute layout: one GEMM per chunk across the whole batch, the shape the
//! cost model prices (`b*l/c` rows). A chunk `[a, e)` of `n = e - a` positions
//! lands in the X staging buffer as one contiguous `[b, n, h]` region at row
//! `b*(a-g)` (the copy stream writes `b` pieces, sequence-major, then records
//! the chunk's event). The compute stream then runs one GEMM for K and one for
//! V into the recompute temporaries at the same rows (`[b*n, kv_dim]`), RoPE
//! on the K rows in one call (positions listed per row, sequence-major), and
//! scatters each sequence's `n` rows into its K/V staging region at `a` with
//! `copy_d2d` on the compute stream (`2b` contiguous copies per chunk).
//! Attention reads staging as `[b, capacity, kv_dim]`, so the scatter stays:
//! it moves `2*b*n*kv_dim` values on the device, far less than the GEMMs
//! read, and lets the GEMM run at the batch's full height.
//!
//! Ordering: each step starts by making the copy and compute streams wait for
//! every earlier writeback; a staging buffer is refilled only after the
//! attention that last read it (`attn_done`). No device buffer is allocated
//! per step, and the host-side position lists are preallocated too.
//!
//! Tracing ([`Executor::trace_next_step`]): a traced step also records an
//! event pair around each op on its stream (copy: `resident_copy`, `x_copy`
//! per chunk, `kv_copy`; compute: `qkv`, `recompute` per chunk, `attention`,
//! `dense`, `head`; writeback: `writeback`) and reads them once the step has
//! finished (see `trace.rs`). An untraced step records nothing extra.

use std::time::Instant;

use kernels::{AttnShape, Backend, DeviceBuf, Event, Stream};
use plans::{TraceOpKind, TraceStep};

use crate::model::Model;
use plans::{Split, StoreLayout};

use crate::store::{HostStore, Stored};
use crate::trace::Recorder;
use crate::{AtLayer, Result, RuntimeError};

/// Bytes and time of one decode step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Context length `s` (tokens already cached).
    pub context: usize,
    pub split: Option<Split>,
    /// Activation bytes moved host-to-device.
    pub bytes_x: u64,
    /// K/V bytes moved host-to-device.
    pub bytes_kv: u64,
    pub measured_us: f64,
}

/// Device state for one generation: staging, resident area, activations.
pub struct Executor<'a> {
    backend: &'a Backend,
    model: &'a Model,
    pub store: HostStore,
    batch: usize,
    /// Positions per sequence in the staging buffers.
    cap: usize,
    /// Positions per sequence in the resident area.
    res_cap: usize,
    k_stage: [DeviceBuf; 2],
    v_stage: [DeviceBuf; 2],
    x_stage: [DeviceBuf; 2],
    attn_done: [Option<Event>; 2],
    kv_ready: [Option<Event>; 2],
    /// Per staging buffer: each chunk's `[a, e)`, its first entry in
    /// `chunk_pos`, and the event that says its `X` has landed.
    chunk_ready: [Vec<(usize, usize, usize, Event)>; 2],
    /// Per staging buffer: RoPE positions of every recomputed row, chunk by
    /// chunk, sequence-major within a chunk (capacity `batch * capacity`).
    chunk_pos: [Vec<u32>; 2],
    /// Recomputed K and V `[batch * capacity, kv_dim]`, rows as in `x_stage`.
    k_tmp: DeviceBuf,
    v_tmp: DeviceBuf,
    /// The decode token's position, once per sequence.
    tok_pos: Vec<u32>,
    k_res: Vec<DeviceBuf>,
    v_res: Vec<DeviceBuf>,
    new_x: Vec<DeviceBuf>,
    new_k: Vec<DeviceBuf>,
    new_v: Vec<DeviceBuf>,
    hidden: DeviceBuf,
    q: DeviceBuf,
    att: DeviceBuf,
    tmp_h: DeviceBuf,
    mlp_out: DeviceBuf,
    gate: DeviceBuf,
    up: DeviceBuf,
    logits: DeviceBuf,
    bytes_x: u64,
    bytes_kv: u64,
    /// The index to give the next step's trace, when it is to be traced.
    trace_next: Option<usize>,
    /// The step being traced.
    trace: Option<Recorder>,
    /// The last traced step's timeline, until taken.
    traced: Option<TraceStep>,
}

/// Opens a traced op on `stream` (nothing when not tracing).
fn mark(be: &Backend, rec: &Option<Recorder>, stream: Stream) -> Result<Option<Event>> {
    rec.as_ref().map(|_| Recorder::mark(be, stream)).transpose()
}

/// Closes an op opened by [`mark`].
fn close(
    be: &Backend,
    rec: &mut Option<Recorder>,
    start: Option<Event>,
    stream: Stream,
    layer: Option<usize>,
    kind: TraceOpKind,
) -> Result<()> {
    match (rec.as_mut(), start) {
        (Some(r), Some(start)) => r.close(be, start, stream, layer, kind),
        _ => Ok(()),
    }
}

/// Splits `[a, a+l)` into `c` nearly equal chunks.
fn chunk_bounds(a: usize, l: usize, c: usize) -> impl Iterator<Item = (usize, usize)> {
    let c = c.clamp(1, l.max(1));
    (0..c).map(move |i| (a + l * i / c, a + l * (i + 1) / c))
}

impl<'a> Executor<'a> {
    /// Allocates everything a run of `batch` sequences up to `capacity`
    /// positions needs, with the host store laid out for `layout`.
    pub fn new(
        backend: &'a Backend,
        model: &'a Model,
        layout: StoreLayout,
        batch: usize,
        capacity: usize,
    ) -> Result<Self> {
        let s = model.spec();
        let (h, qd, kvd, f, nl) = (
            s.hidden_size,
            s.q_dim(),
            s.kv_dim(),
            s.intermediate_size,
            s.n_layers,
        );
        let res_cap = layout.max_resident.min(capacity);
        check_memory_for(backend, s, &layout, batch, capacity, res_cap)?;
        let store = HostStore::new(backend, layout, nl, batch, h, kvd, capacity)?;
        let a = |n: usize| backend.alloc(n.max(1));
        let two = |n: usize| -> Result<[DeviceBuf; 2]> { Ok([a(n)?, a(n)?]) };
        let per_layer =
            |n: usize| -> Result<Vec<DeviceBuf>> { (0..nl).map(|_| Ok(a(n)?)).collect() };
        Ok(Executor {
            backend,
            model,
            store,
            batch,
            cap: capacity,
            res_cap,
            k_stage: two(batch * capacity * kvd)?,
            v_stage: two(batch * capacity * kvd)?,
            x_stage: two(batch * capacity * h)?,
            attn_done: [None, None],
            kv_ready: [None, None],
            chunk_ready: [Vec::new(), Vec::new()],
            chunk_pos: [
                Vec::with_capacity(batch * capacity),
                Vec::with_capacity(batch * capacity),
            ],
            k_tmp: a(batch * capacity * kvd)?,
            v_tmp: a(batch * capacity * kvd)?,
            tok_pos: Vec::with_capacity(batch),
            k_res: per_layer(batch * res_cap * kvd)?,
            v_res: per_layer(batch * res_cap * kvd)?,
            new_x: per_layer(batch * h)?,
            new_k: per_layer(batch * kvd)?,
            new_v: per_layer(batch * kvd)?,
            hidden: a(batch * h)?,
            q: a(batch * qd)?,
            att: a(batch * qd)?,
            tmp_h: a(batch * h)?,
            mlp_out: a(batch * h)?,
            gate: a(batch * f)?,
            up: a(batch * f)?,
            logits: a(batch * s.vocab_size)?,
            bytes_x: 0,
            bytes_kv: 0,
            trace_next: None,
            trace: None,
            traced: None,
        })
    }

    /// Runs the prompts (`[batch, p]` ids) at positions `0..p`, fills the host
    /// store and the resident area, and returns the last position's logits.
    pub fn prefill(&mut self, tokens: &[u32], p: usize) -> Result<Vec<f32>> {
        let (be, m) = (self.backend, self.model);
        let s = m.spec();
        let (h, qd, kvd, f, b, cap) = (
            s.hidden_size,
            s.q_dim(),
            s.kv_dim(),
            s.intermediate_size,
            self.batch,
            self.cap,
        );
        let rows = b * p;
        if tokens.len() != rows || p == 0 || p >= cap {
            return Err(RuntimeError::Request {
                what: "prefill".into(),
                reason: format!(
                    "{} ids for {b} prompts of {p} tokens (capacity {cap})",
                    tokens.len()
                ),
            });
        }
        // Prefill is not the measured loop: its activations are allocated here.
        let hidden = be.alloc(rows * h)?;
        let xn = be.alloc(rows * h)?;
        let q = be.alloc(rows * qd)?;
        let att = be.alloc(rows * qd)?;
        let tmp = be.alloc(rows * h)?;
        let gate = be.alloc(rows * f)?;
        let up = be.alloc(rows * f)?;
        be.embedding(&m.embed_tokens, tokens, &hidden, h)?;
        let pos: Vec<u32> = (0..p as u32).collect();
        let all_pos: Vec<u32> = (0..rows).map(|r| (r % p) as u32).collect();
        let (eps, theta, inter) = (
            s.norm_eps as f32,
            s.rope_theta as f32,
            m.config.rope.interleaved(),
        );
        for (li, l) in m.layers.iter().enumerate() {
            let a = &l.self_attn;
            let (ks, vs) = (&self.k_stage[0], &self.v_stage[0]);
            be.rmsnorm(&hidden, &l.input_layernorm, &xn, rows, h, eps)
                .at(li)?;
            be.gemm(&xn, 0, &a.q_proj, 0, &q, 0, rows, qd, h).at(li)?;
            be.rope(
                &q, 0, rows, qd, s.n_heads, s.head_dim, &all_pos, theta, inter,
            )
            .at(li)?;
            for bi in 0..b {
                let (xo, ko) = (bi * p * h, bi * cap * kvd);
                be.gemm(&xn, xo, &a.k_proj, 0, ks, ko, p, kvd, h).at(li)?;
                be.gemm(&xn, xo, &a.v_proj, 0, vs, ko, p, kvd, h).at(li)?;
                be.rope(ks, ko, p, kvd, s.n_kv_heads, s.head_dim, &pos, theta, inter)
                    .at(li)?;
            }
            let shape = self.attn_shape(b, p, 0, cap);
            be.attention(&q, ks, vs, &att, shape).at(li)?;
            self.write_back_prefill(li, &xn, p)?;
            be.gemm(&att, 0, &a.o_proj, 0, &tmp, 0, rows, h, qd)
                .at(li)?;
            be.add(&hidden, &tmp, &hidden, rows * h).at(li)?;
            self.mlp(li, &hidden, &xn, &gate, &up, &tmp, rows)?;
        }
        // The head on each sequence's last position.
        for bi in 0..b {
            let last = (bi * p + p - 1) * h;
            be.copy_d2d(Stream::Compute, &hidden, last, &self.hidden, bi * h, h)?;
        }
        self.head()
    }

    /// Stores prefill's `X` and K/V of layer `li` (positions `0..p`) on the
    /// host where the plan reads them, and in the resident area.
    fn write_back_prefill(&mut self, li: usize, xn: &DeviceBuf, p: usize) -> Result<()> {
        let be = self.backend;
        let s = self.model.spec();
        let (h, kvd, cap, rc) = (s.hidden_size, s.kv_dim(), self.cap, self.res_cap);
        let ev = be.record(Stream::Compute).at(li)?;
        be.wait(Stream::Writeback, &ev).at(li)?;
        for bi in 0..self.batch {
            for pos in 0..p {
                if let Some(slot) = self.store.stores(Stored::X, pos) {
                    let off = self.store.offset(Stored::X, bi, slot);
                    let src = (bi * p + pos) * h;
                    be.copy_d2h(Stream::Writeback, xn, src, &self.store.x[li], off, h)
                        .at(li)?;
                }
                if let Some(slot) = self.store.stores(Stored::Kv, pos) {
                    let off = self.store.offset(Stored::Kv, bi, slot);
                    let src = (bi * cap + pos) * kvd;
                    be.copy_d2h(
                        Stream::Writeback,
                        &self.k_stage[0],
                        src,
                        &self.store.k[li],
                        off,
                        kvd,
                    )
                    .at(li)?;
                    be.copy_d2h(
                        Stream::Writeback,
                        &self.v_stage[0],
                        src,
                        &self.store.v[li],
                        off,
                        kvd,
                    )
                    .at(li)?;
                }
            }
            let n = p.min(rc);
            let (src, dst) = (bi * cap * kvd, bi * rc * kvd);
            be.copy_d2d(
                Stream::Compute,
                &self.k_stage[0],
                src,
                &self.k_res[li],
                dst,
                n * kvd,
            )
            .at(li)?;
            be.copy_d2d(
                Stream::Compute,
                &self.v_stage[0],
                src,
                &self.v_res[li],
                dst,
                n * kvd,
            )
            .at(li)?;
        }
        self.store.mark_written(Stored::X, li, 0, p);
        self.store.mark_written(Stored::Kv, li, 0, p);
        // The next layer overwrites `xn` and the staging buffer.
        let done = be.record(Stream::Writeback).at(li)?;
        be.wait(Stream::Compute, &done).at(li)?;
        Ok(())
    }

    fn attn_shape(&self, batch: usize, q_len: usize, q_pos0: usize, cap: usize) -> AttnShape {
        let s = self.model.spec();
        AttnShape {
            batch,
            q_len,
            q_pos0,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            head_dim: s.head_dim,
            kv_capacity: cap,
            scale: 1.0 / (s.head_dim as f32).sqrt(),
        }
    }

    /// `hidden += down(silu(gate(norm(hidden))) * up(norm(hidden)))` over `rows`.
    #[allow(clippy::too_many_arguments)]
    fn mlp(
        &self,
        li: usize,
        hidden: &DeviceBuf,
        xn: &DeviceBuf,
        gate: &DeviceBuf,
        up: &DeviceBuf,
        tmp: &DeviceBuf,
        rows: usize,
    ) -> Result<()> {
        let be = self.backend;
        let s = self.model.spec();
        let (h, f) = (s.hidden_size, s.intermediate_size);
        let l = &self.model.layers[li];
        be.rmsnorm(
            hidden,
            &l.post_attention_layernorm,
            xn,
            rows,
            h,
            s.norm_eps as f32,
        )
        .at(li)?;
        be.gemm(xn, 0, &l.mlp.gate_proj, 0, gate, 0, rows, f, h)
            .at(li)?;
        be.gemm(xn, 0, &l.mlp.up_proj, 0, up, 0, rows, f, h)
            .at(li)?;
        be.silu_gate(gate, up, gate, rows * f).at(li)?;
        be.gemm(gate, 0, &l.mlp.down_proj, 0, tmp, 0, rows, h, f)
            .at(li)?;
        be.add(hidden, tmp, hidden, rows * h).at(li)?;
        Ok(())
    }

    /// Final norm and output projection of `self.hidden`; logits `[batch, vocab]`.
    fn head(&mut self) -> Result<Vec<f32>> {
        let (be, m) = (self.backend, self.model);
        let s = m.spec();
        let (h, v, b) = (s.hidden_size, s.vocab_size, self.batch);
        be.rmsnorm(&self.hidden, &m.norm, &self.tmp_h, b, h, s.norm_eps as f32)?;
        be.gemm(&self.tmp_h, 0, m.lm_head(), 0, &self.logits, 0, b, v, h)?;
        Ok(be.download(&self.logits, 0, b * v)?)
    }

    /// Issues layer `li`'s copies for `split` on the copy stream.
    fn issue_copies(&mut self, li: usize, sp: Split) -> Result<()> {
        let be = self.backend;
        let s = self.model.spec();
        let (h, kvd, cap, rc, b) = (
            s.hidden_size,
            s.kv_dim(),
            self.cap,
            self.res_cap,
            self.batch,
        );
        let buf = li % 2;
        if let Some(ev) = &self.attn_done[buf] {
            be.wait(Stream::Copy, ev).at(li)?;
        }
        let (ks, vs, xs) = (&self.k_stage[buf], &self.v_stage[buf], &self.x_stage[buf]);
        if sp.g > 0 {
            let t = mark(be, &self.trace, Stream::Copy)?;
            for bi in 0..b {
                let (src, dst) = (bi * rc * kvd, bi * cap * kvd);
                be.copy_d2d(Stream::Copy, &self.k_res[li], src, ks, dst, sp.g * kvd)
                    .at(li)?;
                be.copy_d2d(Stream::Copy, &self.v_res[li], src, vs, dst, sp.g * kvd)
                    .at(li)?;
            }
            let kind = TraceOpKind::ResidentCopy;
            close(be, &mut self.trace, t, Stream::Copy, Some(li), kind)?;
        }
        let mut chunks = std::mem::take(&mut self.chunk_ready[buf]);
        let mut rpos = std::mem::take(&mut self.chunk_pos[buf]);
        chunks.clear();
        rpos.clear();
        if sp.l > 0 {
            let slot0 = self.store.read_range(Stored::X, li, sp.g, sp.g + sp.l)?;
            for (a, e) in chunk_bounds(sp.g, sp.l, sp.chunks) {
                // The chunk as one `[b, n, h]` region at row `b*(a-g)`.
                let (n, row0) = (e - a, b * (a - sp.g));
                let t = mark(be, &self.trace, Stream::Copy)?;
                for bi in 0..b {
                    let src = self.store.offset(Stored::X, bi, slot0 + a - sp.g);
                    let dst = (row0 + bi * n) * h;
                    be.copy_h2d(Stream::Copy, &self.store.x[li], src, xs, dst, n * h)
                        .at(li)?;
                }
                let p0 = rpos.len();
                for _ in 0..b {
                    rpos.extend(a as u32..e as u32);
                }
                chunks.push((a, e, p0, be.record(Stream::Copy).at(li)?));
                close(
                    be,
                    &mut self.trace,
                    t,
                    Stream::Copy,
                    Some(li),
                    TraceOpKind::XCopy,
                )?;
            }
            self.bytes_x += (b * sp.l * h * 4) as u64;
        }
        self.chunk_pos[buf] = rpos;
        self.chunk_ready[buf] = chunks;
        let t0 = sp.g + sp.l;
        if sp.s > t0 {
            let slot0 = self.store.read_range(Stored::Kv, li, t0, sp.s)?;
            let t = mark(be, &self.trace, Stream::Copy)?;
            for bi in 0..b {
                let src = self.store.offset(Stored::Kv, bi, slot0);
                let (dst, n) = ((bi * cap + t0) * kvd, (sp.s - t0) * kvd);
                be.copy_h2d(Stream::Copy, &self.store.k[li], src, ks, dst, n)
                    .at(li)?;
                be.copy_h2d(Stream::Copy, &self.store.v[li], src, vs, dst, n)
                    .at(li)?;
            }
            self.bytes_kv += (b * (sp.s - t0) * 2 * kvd * 4) as u64;
            close(
                be,
                &mut self.trace,
                t,
                Stream::Copy,
                Some(li),
                TraceOpKind::KvCopy,
            )?;
        }
        self.kv_ready[buf] = Some(be.record(Stream::Copy).at(li)?);
        Ok(())
    }

    /// One decode step: `ids` (one per sequence) at position `sp.s`; returns
    /// the logits `[batch, vocab]` and the step's bytes and time.
    pub fn step(&mut self, ids: &[u32], sp: Split) -> Result<(Vec<f32>, StepStats)> {
        let t_start = Instant::now();
        let (be, m) = (self.backend, self.model);
        self.trace = match self.trace_next.take() {
            Some(i) => Some(Recorder::begin(be, i)?),
            None => None,
        };
        let s = m.spec();
        let (h, qd, kvd, b, cap, rc) = (
            s.hidden_size,
            s.q_dim(),
            s.kv_dim(),
            self.batch,
            self.cap,
            self.res_cap,
        );
        let pos = sp.s;
        if ids.len() != b || pos >= cap || sp.g + sp.l > pos || sp.g > rc {
            return Err(RuntimeError::Request {
                what: "decode step".into(),
                reason: format!(
                    "{} ids at position {pos} with split {sp:?} (capacity {cap}, resident {rc})",
                    ids.len()
                ),
            });
        }
        let (eps, theta, inter) = (
            s.norm_eps as f32,
            s.rope_theta as f32,
            m.config.rope.interleaved(),
        );
        let (bx0, bkv0) = (self.bytes_x, self.bytes_kv);
        // Earlier writebacks land before this step reads or overwrites their sources.
        let wb = be.record(Stream::Writeback)?;
        be.wait(Stream::Copy, &wb)?;
        be.wait(Stream::Compute, &wb)?;
        // Fully resident (no plan, or a plan keeping everything): attend in the
        // resident area directly.
        let direct = sp.g == pos && pos < rc;
        be.embedding(&m.embed_tokens, ids, &self.hidden, h)?;
        let mut positions = std::mem::take(&mut self.tok_pos);
        positions.clear();
        positions.resize(b, pos as u32);
        if !direct {
            self.issue_copies(0, sp)?;
        }
        for li in 0..m.layers.len() {
            let l = &m.layers[li];
            let a = &l.self_attn;
            let buf = li % 2;
            let t = mark(be, &self.trace, Stream::Compute)?;
            {
                let (nx, nk, nv) = (&self.new_x[li], &self.new_k[li], &self.new_v[li]);
                be.rmsnorm(&self.hidden, &l.input_layernorm, nx, b, h, eps)
                    .at(li)?;
                be.gemm(nx, 0, &a.q_proj, 0, &self.q, 0, b, qd, h).at(li)?;
                be.gemm(nx, 0, &a.k_proj, 0, nk, 0, b, kvd, h).at(li)?;
                be.gemm(nx, 0, &a.v_proj, 0, nv, 0, b, kvd, h).at(li)?;
                be.rope(
                    &self.q, 0, b, qd, s.n_heads, s.head_dim, &positions, theta, inter,
                )
                .at(li)?;
                be.rope(
                    nk,
                    0,
                    b,
                    kvd,
                    s.n_kv_heads,
                    s.head_dim,
                    &positions,
                    theta,
                    inter,
                )
                .at(li)?;
            }
            close(
                be,
                &mut self.trace,
                t,
                Stream::Compute,
                Some(li),
                TraceOpKind::Qkv,
            )?;
            if !direct {
                let mut rec = self.trace.take();
                let r = self.recompute(li, buf, sp.g, &mut rec);
                self.trace = rec;
                r?;
                if let Some(ev) = &self.kv_ready[buf] {
                    be.wait(Stream::Compute, ev).at(li)?;
                }
                // This layer's K/V are in: the copy stream moves on to the next layer.
                if li + 1 < m.layers.len() {
                    self.issue_copies(li + 1, sp)?;
                }
            }
            let (ks, vs, kv_cap) = if direct {
                (&self.k_res[li], &self.v_res[li], rc)
            } else {
                (&self.k_stage[buf], &self.v_stage[buf], cap)
            };
            let (nk, nv) = (&self.new_k[li], &self.new_v[li]);
            let t = mark(be, &self.trace, Stream::Compute)?;
            for bi in 0..b {
                let dst = (bi * kv_cap + pos) * kvd;
                be.copy_d2d(Stream::Compute, nk, bi * kvd, ks, dst, kvd)
                    .at(li)?;
                be.copy_d2d(Stream::Compute, nv, bi * kvd, vs, dst, kvd)
                    .at(li)?;
            }
            let shape = self.attn_shape(b, 1, pos, kv_cap);
            be.attention(&self.q, ks, vs, &self.att, shape).at(li)?;
            let kind = TraceOpKind::Attention;
            close(be, &mut self.trace, t, Stream::Compute, Some(li), kind)?;
            if !direct {
                self.attn_done[buf] = Some(be.record(Stream::Compute).at(li)?);
            }
            self.write_back_token(li, pos, direct)?;
            let t = mark(be, &self.trace, Stream::Compute)?;
            be.gemm(&self.att, 0, &a.o_proj, 0, &self.tmp_h, 0, b, h, qd)
                .at(li)?;
            be.add(&self.hidden, &self.tmp_h, &self.hidden, b * h)
                .at(li)?;
            // `new_x[li]` is still owed to the writeback: normalise into `tmp_h`.
            self.mlp(
                li,
                &self.hidden,
                &self.tmp_h,
                &self.gate,
                &self.up,
                &self.mlp_out,
                b,
            )?;
            close(
                be,
                &mut self.trace,
                t,
                Stream::Compute,
                Some(li),
                TraceOpKind::Dense,
            )?;
        }
        self.tok_pos = positions;
        let t = mark(be, &self.trace, Stream::Compute)?;
        let logits = self.head()?;
        close(
            be,
            &mut self.trace,
            t,
            Stream::Compute,
            None,
            TraceOpKind::Head,
        )?;
        if let Some(rec) = self.trace.take() {
            self.traced = Some(rec.finish(be, sp)?);
        }
        let stats = StepStats {
            context: pos,
            split: Some(sp),
            bytes_x: self.bytes_x - bx0,
            bytes_kv: self.bytes_kv - bkv0,
            measured_us: t_start.elapsed().as_secs_f64() * 1e6,
        };
        Ok((logits, stats))
    }

    /// Recomputes K/V of each chunk of `X` as soon as its copy has landed:
    /// per chunk one GEMM each for K and V over all `b*n` rows, one RoPE
    /// call, then each sequence's rows scattered into its staging region.
    fn recompute(&self, li: usize, buf: usize, g: usize, rec: &mut Option<Recorder>) -> Result<()> {
        let be = self.backend;
        let s = self.model.spec();
        let (h, kvd, cap, b) = (s.hidden_size, s.kv_dim(), self.cap, self.batch);
        let (theta, inter) = (s.rope_theta as f32, self.model.config.rope.interleaved());
        let a = &self.model.layers[li].self_attn;
        let (ks, vs, xs) = (&self.k_stage[buf], &self.v_stage[buf], &self.x_stage[buf]);
        let (kt, vt) = (&self.k_tmp, &self.v_tmp);
        for &(c0, c1, p0, ref ev) in &self.chunk_ready[buf] {
            be.wait(Stream::Compute, ev).at(li)?;
            let t = mark(be, rec, Stream::Compute)?;
            let (n, row0) = (c1 - c0, b * (c0 - g));
            let (m, xo, ko) = (b * n, row0 * h, row0 * kvd);
            be.gemm(xs, xo, &a.k_proj, 0, kt, ko, m, kvd, h).at(li)?;
            be.gemm(xs, xo, &a.v_proj, 0, vt, ko, m, kvd, h).at(li)?;
            let pos = &self.chunk_pos[buf][p0..p0 + m];
            be.rope(kt, ko, m, kvd, s.n_kv_heads, s.head_dim, pos, theta, inter)
                .at(li)?;
            for bi in 0..b {
                let (src, dst) = (ko + bi * n * kvd, (bi * cap + c0) * kvd);
                be.copy_d2d(Stream::Compute, kt, src, ks, dst, n * kvd)
                    .at(li)?;
                be.copy_d2d(Stream::Compute, vt, src, vs, dst, n * kvd)
                    .at(li)?;
            }
            close(
                be,
                rec,
                t,
                Stream::Compute,
                Some(li),
                TraceOpKind::Recompute,
            )?;
        }
        Ok(())
    }

    /// The new token's `X` and K/V of layer `li` at `pos`: to the host store
    /// where the plan will read them, and to the resident area.
    fn write_back_token(&mut self, li: usize, pos: usize, direct: bool) -> Result<()> {
        let be = self.backend;
        let s = self.model.spec();
        let (h, kvd, rc) = (s.hidden_size, s.kv_dim(), self.res_cap);
        let (nx, nk, nv) = (&self.new_x[li], &self.new_k[li], &self.new_v[li]);
        let x_slot = self.store.stores(Stored::X, pos);
        let kv_slot = self.store.stores(Stored::Kv, pos);
        if x_slot.is_some() || kv_slot.is_some() {
            let ev = be.record(Stream::Compute).at(li)?;
            be.wait(Stream::Writeback, &ev).at(li)?;
        }
        let t = match x_slot.or(kv_slot) {
            Some(_) => mark(be, &self.trace, Stream::Writeback)?,
            None => None,
        };
        for bi in 0..self.batch {
            if let Some(slot) = x_slot {
                let off = self.store.offset(Stored::X, bi, slot);
                be.copy_d2h(Stream::Writeback, nx, bi * h, &self.store.x[li], off, h)
                    .at(li)?;
            }
            if let Some(slot) = kv_slot {
                let off = self.store.offset(Stored::Kv, bi, slot);
                be.copy_d2h(Stream::Writeback, nk, bi * kvd, &self.store.k[li], off, kvd)
                    .at(li)?;
                be.copy_d2h(Stream::Writeback, nv, bi * kvd, &self.store.v[li], off, kvd)
                    .at(li)?;
            }
            // The direct path already wrote K/V into the resident area.
            if pos < rc && !direct {
                let dst = (bi * rc + pos) * kvd;
                be.copy_d2d(Stream::Compute, nk, bi * kvd, &self.k_res[li], dst, kvd)
                    .at(li)?;
                be.copy_d2d(Stream::Compute, nv, bi * kvd, &self.v_res[li], dst, kvd)
                    .at(li)?;
            }
        }
        let kind = TraceOpKind::Writeback;
        close(be, &mut self.trace, t, Stream::Writeback, Some(li), kind)?;
        if x_slot.is_some() {
            self.store.mark_written(Stored::X, li, pos, pos + 1);
        }
        if kv_slot.is_some() {
            self.store.mark_written(Stored::Kv, li, pos, pos + 1);
        }
        Ok(())
    }

    /// Traces the next decode step, which the trace will call step `index`.
    pub fn trace_next_step(&mut self, index: usize) {
        self.trace_next = Some(index);
    }

    /// The last traced step's measured timeline (once; None if none was traced).
    pub fn take_trace(&mut self) -> Option<TraceStep> {
        self.traced.take()
    }

    /// Host bytes of the store, at the backend's dtype.
    pub fn host_bytes(&self) -> u64 {
        self.store
            .host_bytes(self.model.spec(), self.backend.dtype())
    }
}

/// Refuses a run whose buffers the machine cannot hold, before allocating
/// them: the host store and, on the CPU backend (whose device is host memory),
/// the staging, resident and scratch buffers [`Executor::new`] allocates.
fn check_memory_for(
    backend: &Backend,
    s: &plans::ModelSpec,
    layout: &StoreLayout,
    batch: usize,
    capacity: usize,
    res_cap: usize,
) -> Result<()> {
    use crate::memory::bytes_of;
    let (h, kvd, nl) = (s.hidden_size, s.kv_dim(), s.n_layers);
    let p = backend.dtype().bytes();
    let mut needed = [
        bytes_of(&[nl, batch, layout.x.len(), h, p]),
        bytes_of(&[nl, batch, layout.kv.len(), 2 * kvd, p]),
    ]
    .iter()
    .fold(0u64, |a, b| a.saturating_add(*b));
    if !backend.is_cuda() {
        let device = [
            bytes_of(&[2, batch, capacity, 2 * kvd + h, p]), // k/v/x staging
            bytes_of(&[batch, capacity, 2 * kvd, p]),        // k/v tmp
            bytes_of(&[nl, batch, res_cap, 2 * kvd, p]),     // resident K/V
            bytes_of(&[batch, s.vocab_size + 2 * s.intermediate_size, p]),
        ];
        needed = device.iter().fold(needed, |a, b| a.saturating_add(*b));
    }
    crate::check_memory(
        &format!("a batch of {batch} up to context {capacity}"),
        needed,
        "run fewer prompts at once or generate fewer tokens",
    )
}
