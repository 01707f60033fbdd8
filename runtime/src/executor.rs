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
//! `b*(a-g)` (the copy stream writes it as one strided copy, then records the
//! chunk's event). The compute stream then runs one GEMM for K and one for V
//! into the recompute temporaries at the same rows (`[b*n, kv_dim]`), RoPE on
//! the K rows in one call (their positions sit at the same rows of the step's
//! position buffer), and scatters each sequence's `n` rows into its K/V
//! staging region at `a` with one `scatter` kernel per K and V. Attention
//! reads staging as `[b, capacity, kv_dim]`, so the scatter stays: it moves
//! `2*b*n*kv_dim` values on the device, far less than the GEMMs read, and lets
//! the GEMM run at the batch's full height.
//!
//! Data stays on the device: a step's token ids are the previous step's
//! choice (argmax or sampling on the device, [`Executor::choose`]), and its
//! positions (the new token's, then every recomputed row's) are written to the
//! device once per step. The host waits for the device once per step, to read
//! the chosen ids; logits are downloaded only when asked for
//! ([`Executor::logits`]).
//!
//! Ordering is expressed only as stream waits on events, so the same code
//! gives the same schedule on a backend whose host runs ahead (CUDA) and on
//! the CPU backend: each step starts by making the copy and compute streams
//! wait for every earlier writeback; a staging buffer is refilled only after
//! the attention that last read it (`attn_done`). No buffer is allocated per
//! step, on the device or on the host.
//!
//! Tracing ([`Executor::trace_next_step`]): a traced step also records an
//! event pair around each op on its stream (copy: `resident_copy`, `x_copy`
//! per chunk, `kv_copy`; compute: `qkv`, `recompute` per chunk, `attention`,
//! `dense`, `head`; writeback: `writeback`) and reads them once the step has
//! finished (see `trace.rs`). An untraced step records nothing extra.

use kernels::{AttnShape, Backend, DeviceBuf, Event, IdBuf, RopeFreqs, Rows, SampleArgs, Stream};
use plans::{TraceOpKind, TraceStep};

use crate::layer::{project, Proj};
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
    /// Per staging buffer: each chunk's `[a, e)` and the event that says its
    /// `X` has landed.
    chunk_ready: [Vec<(usize, usize, Event)>; 2],
    /// Recomputed K and V `[batch * capacity, kv_dim]`, rows as in `x_stage`.
    k_tmp: DeviceBuf,
    v_tmp: DeviceBuf,
    /// The step's token ids on the device (one per sequence): written by
    /// [`Executor::choose`] (or [`Executor::set_ids`]), read by the embedding.
    ids: IdBuf,
    /// The step's positions on the device: `[0, batch)` the new token's, then
    /// from `batch` every recomputed row's, at its row of `x_stage`.
    pos: IdBuf,
    /// The host copy of `pos` (preallocated; written once per step).
    pos_host: Vec<u32>,
    k_res: Vec<DeviceBuf>,
    v_res: Vec<DeviceBuf>,
    new_x: Vec<DeviceBuf>,
    new_k: Vec<DeviceBuf>,
    new_v: Vec<DeviceBuf>,
    act: Activations,
    logits: DeviceBuf,
    bytes_x: u64,
    bytes_kv: u64,
    /// The index to give the next step's trace, when it is to be traced.
    trace_next: Option<usize>,
    /// The step being traced.
    trace: Option<Recorder>,
    /// The last traced step's timeline, until taken.
    traced: Option<TraceStep>,
    /// The step issued last, until [`Executor::finish_step`].
    issued: Option<Issued>,
    /// This generation's RoPE table where it is not the model's (dynamic
    /// NTK: made for the prompt's length at prefill).
    prompt_rope: Option<RopeFreqs>,
}

/// A step on its way: what it moved, and the events around it.
struct Issued {
    stats: StepStats,
    start: Event,
    end: Event,
    trace: Option<Recorder>,
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
        let (h, kvd, nl) = (s.hidden_size, s.kv_dim(), s.n_layers);
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
            k_tmp: a(batch * capacity * kvd)?,
            v_tmp: a(batch * capacity * kvd)?,
            ids: backend.alloc_ids(batch.max(1))?,
            pos: backend.alloc_ids(batch + batch * capacity)?,
            pos_host: Vec::with_capacity(batch + batch * capacity),
            k_res: per_layer(batch * res_cap * kvd)?,
            v_res: per_layer(batch * res_cap * kvd)?,
            new_x: per_layer(batch * h)?,
            new_k: per_layer(batch * kvd)?,
            new_v: per_layer(batch * kvd)?,
            act: Activations::new(backend, s, batch)?,
            logits: a(batch * s.vocab_size)?,
            bytes_x: 0,
            bytes_kv: 0,
            trace_next: None,
            trace: None,
            traced: None,
            issued: None,
            prompt_rope: None,
        })
    }

    /// The RoPE table every Q and K of this generation turns by.
    fn rope(&self) -> &RopeFreqs {
        self.prompt_rope.as_ref().unwrap_or(&self.model.rope)
    }

    /// Runs the prompts (`[batch, p]` ids) at positions `0..p`, fills the host
    /// store and the resident area, and leaves the last position's logits on
    /// the device (see [`Executor::choose`], [`Executor::logits`]).
    pub fn prefill(&mut self, tokens: &[u32], p: usize) -> Result<()> {
        let (be, m) = (self.backend, self.model);
        let s = m.spec();
        let (h, kvd, b, cap) = (s.hidden_size, s.kv_dim(), self.batch, self.cap);
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
        let vocab = s.vocab_size;
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(RuntimeError::Request {
                what: "prefill".into(),
                reason: format!("token id {bad} is outside the vocabulary of {vocab}"),
            });
        }
        self.prompt_rope = m.prompt_rope(be, p)?;
        // Prefill is not the measured loop: its activations are allocated
        // here and freed when it ends, for one group of whole prompts at a
        // time (`plans::prefill_group`), so they stay bounded at any batch.
        let bytes = plans::ExecutorBytes::new(s, b, cap, 0, p, be.dtype().bytes()).prefill;
        crate::check_device_memory(
            be,
            &format!("prefilling {b} prompts of {p} tokens"),
            bytes,
            "run fewer prompts at once or shorter ones",
        )?;
        let g = plans::prefill_group(b, p);
        let act = Activations::new(be, s, g * p)?;
        let Activations {
            hidden, xn, q, att, ..
        } = &act;
        let ids = be.alloc_ids(g * p)?;
        // Row `r` is at position `r % p`; the first `p` rows list `0..p`.
        let all_pos: Vec<u32> = (0..g * p).map(|r| (r % p) as u32).collect();
        let pos = be.alloc_ids(g * p)?;
        be.write_ids(&pos, 0, &all_pos)?;
        let eps = s.norm_eps as f32;
        for b0 in (0..b).step_by(g) {
            // Sequences `b0..b0 + n`, `rows` rows.
            let n = g.min(b - b0);
            let rows = n * p;
            be.write_ids(&ids, 0, &tokens[b0 * p..(b0 + n) * p])?;
            be.embedding(&m.embed_tokens, &ids, 0, hidden, rows, h)?;
            for (li, l) in m.layers.iter().enumerate() {
                let (ks, vs) = (&self.k_stage[0], &self.v_stage[0]);
                be.rmsnorm(hidden, &l.input_layernorm, xn, rows, h, eps)
                    .at(li)?;
                let rot = Some((&pos, 0, self.rope()));
                project(be, m, li, Proj::Q, (xn, 0), (q, 0), rows, rot)?;
                for bi in 0..n {
                    let (xo, ko) = (bi * p * h, bi * cap * kvd);
                    project(be, m, li, Proj::K, (xn, xo), (ks, ko), p, rot)?;
                    project(be, m, li, Proj::V, (xn, xo), (vs, ko), p, None)?;
                }
                let shape = self.attn_shape(n, p, 0, cap);
                be.attention(q, ks, vs, att, shape).at(li)?;
                self.write_back_prefill(li, xn, p, b0..b0 + n)?;
                act.finish_layer(be, m, li, rows)?;
            }
            // The head reads each sequence's last position.
            let last = Rows {
                rows: n,
                width: h,
                src_pitch: p * h,
                dst_pitch: h,
            };
            be.scatter(hidden, (p - 1) * h, &self.act.hidden, b0 * h, last)?;
        }
        self.head()
    }

    /// Stores prefill's `X` and K/V of layer `li` (positions `0..p`) of
    /// sequences `seqs` (rows `0..` of `xn` and of the staging buffers) on
    /// the host where the plan reads them, and in the resident area.
    fn write_back_prefill(
        &mut self,
        li: usize,
        xn: &DeviceBuf,
        p: usize,
        seqs: std::ops::Range<usize>,
    ) -> Result<()> {
        let be = self.backend;
        let s = self.model.spec();
        let (h, kvd, cap, rc) = (s.hidden_size, s.kv_dim(), self.cap, self.res_cap);
        let ev = be.record(Stream::Compute).at(li)?;
        be.wait(Stream::Writeback, &ev).at(li)?;
        let (b, b0) = (seqs.len(), seqs.start);
        // One strided copy per stored span and kind (one per kind when the
        // plan stores a single range): every sequence's rows at once.
        for (a, e, slot) in self.store.layout.x.spans_within(0, p) {
            let rows = Rows {
                rows: b,
                width: (e - a) * h,
                src_pitch: p * h,
                dst_pitch: self.store.pitch(Stored::X),
            };
            let dst = self.store.offset(Stored::X, b0, slot);
            be.copy_d2h_rows(Stream::Writeback, xn, a * h, &self.store.x[li], dst, rows)
                .at(li)?;
        }
        for (a, e, slot) in self.store.layout.kv.spans_within(0, p) {
            let rows = Rows {
                rows: b,
                width: (e - a) * kvd,
                src_pitch: cap * kvd,
                dst_pitch: self.store.pitch(Stored::Kv),
            };
            let dst = self.store.offset(Stored::Kv, b0, slot);
            for (stage, store) in [
                (&self.k_stage[0], &self.store.k[li]),
                (&self.v_stage[0], &self.store.v[li]),
            ] {
                be.copy_d2h_rows(Stream::Writeback, stage, a * kvd, store, dst, rows)
                    .at(li)?;
            }
        }
        let n = p.min(rc);
        if n > 0 {
            let rows = Rows {
                rows: b,
                width: n * kvd,
                src_pitch: cap * kvd,
                dst_pitch: rc * kvd,
            };
            let dst = b0 * rc * kvd;
            be.scatter(&self.k_stage[0], 0, &self.k_res[li], dst, rows)
                .at(li)?;
            be.scatter(&self.v_stage[0], 0, &self.v_res[li], dst, rows)
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
        attn_shape(self.model.spec(), batch, q_len, q_pos0, cap)
    }

    /// Final norm and output projection of `self.act.hidden` into the logits
    /// `[batch, vocab]`, on the device.
    fn head(&mut self) -> Result<()> {
        let b = self.batch;
        head(
            self.backend,
            self.model,
            &self.act.hidden,
            &self.act.tmp,
            &self.logits,
            b,
        )
    }

    /// Chooses the next id of every sequence on the device from the last
    /// logits: argmax for `None`, else a draw (`SampleArgs::step` makes each
    /// step's noise its own). The ids stay on the device for the next step;
    /// this returns a copy, the one read the host waits for in a step.
    pub fn choose(&mut self, sample: Option<SampleArgs>) -> Result<Vec<u32>> {
        let be = self.backend;
        let (b, v) = (self.batch, self.model.spec().vocab_size);
        match sample {
            None => be.argmax(&self.logits, b, v, &self.ids, 0)?,
            Some(s) => be.sample(&self.logits, b, v, &self.ids, 0, s)?,
        }
        Ok(be.read_ids(&self.ids, 0, b)?)
    }

    /// Sets the next step's ids from the host (instead of [`Executor::choose`]).
    pub fn set_ids(&mut self, ids: &[u32]) -> Result<()> {
        let vocab = self.model.spec().vocab_size;
        if ids.len() != self.batch || ids.iter().any(|&i| i as usize >= vocab) {
            return Err(RuntimeError::Request {
                what: "decode step".into(),
                reason: format!(
                    "{ids:?}: expected {} ids below the vocabulary of {vocab}",
                    self.batch
                ),
            });
        }
        Ok(self.backend.write_ids(&self.ids, 0, ids)?)
    }

    /// The last logits `[batch, vocab]` (downloads them; not part of a step).
    pub fn logits(&self) -> Result<Vec<f32>> {
        let (b, v) = (self.batch, self.model.spec().vocab_size);
        Ok(self.backend.download(&self.logits, 0, b * v)?)
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
        let esz = be.dtype().bytes();
        // Under a sliding window nothing before `lo` is read: not copied, not recomputed.
        let lo = self.window_start(sp);
        if sp.g > lo {
            let t = mark(be, &self.trace, Stream::Copy)?;
            let n = (sp.g - lo) * kvd;
            for bi in 0..b {
                let (src, dst) = ((bi * rc + lo) * kvd, (bi * cap + lo) * kvd);
                be.copy_d2d(Stream::Copy, &self.k_res[li], src, ks, dst, n)
                    .at(li)?;
                be.copy_d2d(Stream::Copy, &self.v_res[li], src, vs, dst, n)
                    .at(li)?;
            }
            let kind = TraceOpKind::ResidentCopy;
            close(be, &mut self.trace, t, Stream::Copy, Some(li), kind)?;
        }
        let mut chunks = std::mem::take(&mut self.chunk_ready[buf]);
        chunks.clear();
        if sp.l > 0 {
            let slot0 = self.store.read_range(Stored::X, li, sp.g, sp.g + sp.l)?;
            for (a, e) in self.chunks_read(sp) {
                // The chunk as one `[b, n, h]` region at row `b*(a-g)`.
                let (n, row0) = (e - a, b * (a - sp.g));
                let t = mark(be, &self.trace, Stream::Copy)?;
                let src = self.store.offset(Stored::X, 0, slot0 + a - sp.g);
                let rows = Rows {
                    rows: b,
                    width: n * h,
                    src_pitch: self.store.pitch(Stored::X),
                    dst_pitch: n * h,
                };
                be.copy_h2d_rows(Stream::Copy, &self.store.x[li], src, xs, row0 * h, rows)
                    .at(li)?;
                chunks.push((a, e, be.record(Stream::Copy).at(li)?));
                close(
                    be,
                    &mut self.trace,
                    t,
                    Stream::Copy,
                    Some(li),
                    TraceOpKind::XCopy,
                )?;
                self.bytes_x += s.x_layer_bytes(b * (e - a), esz);
            }
        }
        self.chunk_ready[buf] = chunks;
        let t0 = (sp.g + sp.l).max(lo);
        if sp.s > t0 {
            let slot0 = self.store.read_range(Stored::Kv, li, t0, sp.s)?;
            let t = mark(be, &self.trace, Stream::Copy)?;
            let src = self.store.offset(Stored::Kv, 0, slot0);
            let rows = Rows {
                rows: b,
                width: (sp.s - t0) * kvd,
                src_pitch: self.store.pitch(Stored::Kv),
                dst_pitch: cap * kvd,
            };
            be.copy_h2d_rows(Stream::Copy, &self.store.k[li], src, ks, t0 * kvd, rows)
                .at(li)?;
            be.copy_h2d_rows(Stream::Copy, &self.store.v[li], src, vs, t0 * kvd, rows)
                .at(li)?;
            self.bytes_kv += s.kv_layer_bytes(b * (sp.s - t0), esz);
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

    /// Issues one decode step of the ids on the device (from
    /// [`Executor::choose`] or [`Executor::set_ids`]) at position `sp.s`; the
    /// logits land on the device. Nothing here waits for the device: read the
    /// step's bytes and time with [`Executor::finish_step`] once the ids it
    /// produced have been chosen.
    pub fn step(&mut self, sp: Split) -> Result<()> {
        let (be, m) = (self.backend, self.model);
        self.trace = match self.trace_next.take() {
            Some(i) => Some(Recorder::begin(be, i)?),
            None => None,
        };
        let s = m.spec();
        let (h, kvd, b, cap, rc) = (
            s.hidden_size,
            s.kv_dim(),
            self.batch,
            self.cap,
            self.res_cap,
        );
        let pos = sp.s;
        if pos >= cap || sp.g + sp.l > pos || sp.g > rc {
            return Err(RuntimeError::Request {
                what: "decode step".into(),
                reason: format!("position {pos} with split {sp:?} (capacity {cap}, resident {rc})"),
            });
        }
        let eps = s.norm_eps as f32;
        let (bx0, bkv0) = (self.bytes_x, self.bytes_kv);
        // Earlier writebacks land before this step reads or overwrites their sources.
        let wb = be.record(Stream::Writeback)?;
        be.wait(Stream::Copy, &wb)?;
        be.wait(Stream::Compute, &wb)?;
        let t_start = be.record(Stream::Compute)?;
        // Fully resident (no plan, or a plan keeping everything): attend in the
        // resident area directly.
        let direct = sp.g == pos && pos < rc;
        be.embedding(&m.embed_tokens, &self.ids, 0, &self.act.hidden, b, h)?;
        // The step's positions, once: the new token's per sequence, then each
        // recomputed row's at its row of `x_stage` (chunk by chunk, sequence-major).
        self.pos_host.clear();
        self.pos_host.resize(b, pos as u32);
        if sp.l > 0 && !direct {
            self.pos_host.resize(b + b * sp.l, 0);
            for (a, e) in self.chunks_read(sp) {
                let (n, row0) = (e - a, b + b * (a - sp.g));
                for bi in 0..b {
                    let at = row0 + bi * n;
                    for (j, p) in (a..e).enumerate() {
                        self.pos_host[at + j] = p as u32;
                    }
                }
            }
        }
        be.write_ids(&self.pos, 0, &self.pos_host)?;
        if !direct {
            self.issue_copies(0, sp)?;
        }
        for li in 0..m.layers.len() {
            let l = &m.layers[li];
            let buf = li % 2;
            let t = mark(be, &self.trace, Stream::Compute)?;
            {
                let (nx, nk, nv) = (&self.new_x[li], &self.new_k[li], &self.new_v[li]);
                be.rmsnorm(&self.act.hidden, &l.input_layernorm, nx, b, h, eps)
                    .at(li)?;
                let pos = Some((&self.pos, 0, self.rope()));
                project(be, m, li, Proj::Q, (nx, 0), (&self.act.q, 0), b, pos)?;
                project(be, m, li, Proj::K, (nx, 0), (nk, 0), b, pos)?;
                project(be, m, li, Proj::V, (nx, 0), (nv, 0), b, None)?;
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
            let rows = Rows {
                rows: b,
                width: kvd,
                src_pitch: kvd,
                dst_pitch: kv_cap * kvd,
            };
            be.scatter(nk, 0, ks, pos * kvd, rows).at(li)?;
            be.scatter(nv, 0, vs, pos * kvd, rows).at(li)?;
            let shape = self.attn_shape(b, 1, pos, kv_cap);
            be.attention(&self.act.q, ks, vs, &self.act.att, shape)
                .at(li)?;
            let kind = TraceOpKind::Attention;
            close(be, &mut self.trace, t, Stream::Compute, Some(li), kind)?;
            if !direct {
                self.attn_done[buf] = Some(be.record(Stream::Compute).at(li)?);
            }
            self.write_back_token(li, pos, direct)?;
            let t = mark(be, &self.trace, Stream::Compute)?;
            // `new_x[li]` is still owed to the writeback: the MLP
            // normalises into its own buffer.
            self.act.finish_layer(be, m, li, b)?;
            close(
                be,
                &mut self.trace,
                t,
                Stream::Compute,
                Some(li),
                TraceOpKind::Dense,
            )?;
        }
        let t = mark(be, &self.trace, Stream::Compute)?;
        self.head()?;
        close(
            be,
            &mut self.trace,
            t,
            Stream::Compute,
            None,
            TraceOpKind::Head,
        )?;
        let t_end = be.record(Stream::Compute)?;
        let stats = StepStats {
            context: pos,
            split: Some(sp),
            bytes_x: self.bytes_x - bx0,
            bytes_kv: self.bytes_kv - bkv0,
            measured_us: 0.0,
        };
        self.issued = Some(Issued {
            stats,
            start: t_start,
            end: t_end,
            trace: self.trace.take(),
        });
        Ok(())
    }

    /// The last issued step's bytes and time (from its compute-stream events,
    /// waiting for them if the device has not got there), and its trace when
    /// it was traced (see [`Executor::take_trace`]). None if no step is pending.
    pub fn finish_step(&mut self) -> Result<Option<StepStats>> {
        let Some(done) = self.issued.take() else {
            return Ok(None);
        };
        let be = self.backend;
        let mut stats = done.stats;
        stats.measured_us = be.elapsed_us(&done.start, &done.end)?;
        if let (Some(rec), Some(sp)) = (done.trace, stats.split) {
            self.traced = Some(rec.finish(be, sp)?);
        }
        Ok(Some(stats))
    }

    /// Recomputes K/V of each chunk of `X` as soon as its copy has landed:
    /// per chunk one GEMM each for K and V over all `b*n` rows, one RoPE
    /// call, then each sequence's rows scattered into its staging region.
    fn recompute(&self, li: usize, buf: usize, g: usize, rec: &mut Option<Recorder>) -> Result<()> {
        let be = self.backend;
        let s = self.model.spec();
        let (h, kvd, cap, b) = (s.hidden_size, s.kv_dim(), self.cap, self.batch);
        let m = self.model;
        let (ks, vs, xs) = (&self.k_stage[buf], &self.v_stage[buf], &self.x_stage[buf]);
        let (kt, vt) = (&self.k_tmp, &self.v_tmp);
        for &(c0, c1, ref ev) in &self.chunk_ready[buf] {
            be.wait(Stream::Compute, ev).at(li)?;
            let t = mark(be, rec, Stream::Compute)?;
            let (n, row0) = (c1 - c0, b * (c0 - g));
            let (rows_n, xo, ko) = (b * n, row0 * h, row0 * kvd);
            // This chunk's positions sit at its rows, after the token positions.
            let pos = Some((&self.pos, b + row0, self.rope()));
            project(be, m, li, Proj::K, (xs, xo), (kt, ko), rows_n, pos)?;
            project(be, m, li, Proj::V, (xs, xo), (vt, ko), rows_n, None)?;
            let rows = Rows {
                rows: b,
                width: n * kvd,
                src_pitch: n * kvd,
                dst_pitch: cap * kvd,
            };
            be.scatter(kt, ko, ks, c0 * kvd, rows).at(li)?;
            be.scatter(vt, ko, vs, c0 * kvd, rows).at(li)?;
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

    /// The first cached position the step at `sp.s` reads: `s + 1 - W` under
    /// a sliding window of `W` (attention never looks before it, so nothing
    /// before it is copied or recomputed), else 0.
    fn window_start(&self, sp: Split) -> usize {
        let w = self.model.spec().arch.sliding_window;
        w.map_or(0, |w| (sp.s + 1).saturating_sub(w))
    }

    /// The recomputed chunks of `sp`, each clipped to the positions the step
    /// reads ([`Executor::window_start`]); empty ones left out. A chunk keeps
    /// its rows of `x_stage` (`b*(a-g)` on), so clipping moves nothing else.
    fn chunks_read(&self, sp: Split) -> impl Iterator<Item = (usize, usize)> {
        let lo = self.window_start(sp);
        chunk_bounds(sp.g, sp.l, sp.chunks)
            .map(move |(a, e)| (a.max(lo), e))
            .filter(|(a, e)| a < e)
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
        let b = self.batch;
        let to_store = |width: usize, kind: Stored| Rows {
            rows: b,
            width,
            src_pitch: width,
            dst_pitch: self.store.pitch(kind),
        };
        if let Some(slot) = x_slot {
            let off = self.store.offset(Stored::X, 0, slot);
            let rows = to_store(h, Stored::X);
            be.copy_d2h_rows(Stream::Writeback, nx, 0, &self.store.x[li], off, rows)
                .at(li)?;
        }
        if let Some(slot) = kv_slot {
            let off = self.store.offset(Stored::Kv, 0, slot);
            let rows = to_store(kvd, Stored::Kv);
            be.copy_d2h_rows(Stream::Writeback, nk, 0, &self.store.k[li], off, rows)
                .at(li)?;
            be.copy_d2h_rows(Stream::Writeback, nv, 0, &self.store.v[li], off, rows)
                .at(li)?;
        }
        // The direct path already wrote K/V into the resident area.
        if pos < rc && !direct {
            let rows = Rows {
                rows: b,
                width: kvd,
                src_pitch: kvd,
                dst_pitch: rc * kvd,
            };
            be.scatter(nk, 0, &self.k_res[li], pos * kvd, rows).at(li)?;
            be.scatter(nv, 0, &self.v_res[li], pos * kvd, rows).at(li)?;
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

    /// For benchmarks: treats positions `0..p` as prefilled without running
    /// the prompt (the host store and resident area keep whatever they hold),
    /// so a decode step at a long context can be timed without its prefill.
    /// Timing does not depend on the values; the logits are meaningless.
    pub fn assume_prefilled(&mut self, p: usize) -> Result<()> {
        if p == 0 || p >= self.cap {
            return Err(RuntimeError::Request {
                what: "assume_prefilled".into(),
                reason: format!("{p} positions, capacity {}", self.cap),
            });
        }
        self.prompt_rope = self.model.prompt_rope(self.backend, p)?;
        for li in 0..self.model.layers.len() {
            self.store.mark_written(Stored::X, li, 0, p);
            self.store.mark_written(Stored::Kv, li, 0, p);
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

/// An attention call's shape for `spec`: `batch` rows of `q_len` queries from
/// position `q_pos0`, K/V `[batch, cap, kv_dim]`.
pub(crate) fn attn_shape(
    s: &plans::ModelSpec,
    batch: usize,
    q_len: usize,
    q_pos0: usize,
    cap: usize,
) -> AttnShape {
    AttnShape {
        batch,
        q_len,
        q_pos0,
        n_heads: s.n_heads,
        n_kv_heads: s.n_kv_heads,
        head_dim: s.head_dim,
        kv_capacity: cap,
        scale: 1.0 / (s.head_dim as f32).sqrt(),
        window: s.arch.sliding_window.unwrap_or(0),
    }
}

/// The activations of a pass through the layers over up to `rows` rows: the
/// residual stream, a normalised input, Q, the attention output, a scratch of
/// the hidden size, and the MLP's gate and up. Prefill allocates its own;
/// a decode step keeps one, allocated once.
pub(crate) struct Activations {
    pub hidden: DeviceBuf,
    pub xn: DeviceBuf,
    pub q: DeviceBuf,
    pub att: DeviceBuf,
    pub tmp: DeviceBuf,
    pub gate: DeviceBuf,
    pub up: DeviceBuf,
}

impl Activations {
    pub fn new(be: &Backend, s: &plans::ModelSpec, rows: usize) -> Result<Self> {
        let a = |n: usize| be.alloc((rows * n).max(1));
        let (h, qd, f) = (s.hidden_size, s.q_dim(), s.intermediate_size);
        Ok(Activations {
            hidden: a(h)?,
            xn: a(h)?,
            q: a(qd)?,
            att: a(qd)?,
            tmp: a(h)?,
            gate: a(f)?,
            up: a(f)?,
        })
    }

    /// Layer `li`'s output projection and MLP over `rows` rows: `hidden +=
    /// o(att)`, then the MLP, normalising into `xn` (so a layer input still
    /// owed to a writeback elsewhere is left alone).
    pub fn finish_layer(&self, be: &Backend, m: &Model, li: usize, rows: usize) -> Result<()> {
        crate::layer::output(be, m, li, &self.att, &self.hidden, &self.tmp, rows)?;
        let bufs = [&self.hidden, &self.xn, &self.gate, &self.up, &self.tmp];
        crate::layer::mlp(be, m, li, bufs, rows)
    }
}

/// Final norm and output projection of `rows` rows of `hidden` into
/// `logits` (`[rows, vocab]`), with `tmp` (`[rows, h]`) as scratch.
pub(crate) fn head(
    be: &Backend,
    m: &Model,
    hidden: &DeviceBuf,
    tmp: &DeviceBuf,
    logits: &DeviceBuf,
    rows: usize,
) -> Result<()> {
    let s = m.spec();
    let (h, v) = (s.hidden_size, s.vocab_size);
    be.rmsnorm(hidden, &m.norm, tmp, rows, h, s.norm_eps as f32)?;
    be.gemm(tmp, 0, m.lm_head(), 0, logits, 0, rows, v, h)?;
    Ok(())
}

/// Refuses a run whose buffers the machine cannot hold, before allocating
/// them: the host store in host memory, and what [`Executor::new`] allocates
/// on the device (`plans::ExecutorBytes`) in the device's free memory (host
/// memory too, on the CPU backend).
fn check_memory_for(
    backend: &Backend,
    s: &plans::ModelSpec,
    layout: &StoreLayout,
    batch: usize,
    capacity: usize,
    res_cap: usize,
) -> Result<()> {
    let host = layout.host_bytes(s, batch, backend.dtype());
    // The prompt is not known yet: `prefill` checks its own buffers.
    let device =
        plans::ExecutorBytes::new(s, batch, capacity, res_cap, 0, backend.dtype().bytes()).run();
    let what = format!("a batch of {batch} up to context {capacity}");
    let hint = "run fewer prompts at once or generate fewer tokens";
    if backend.is_cuda() {
        crate::check_memory(&format!("{what} (the host store)"), host, hint)?;
        crate::check_device_memory(
            backend,
            &format!("{what} (staging, resident K/V and scratch)"),
            device,
            hint,
        )
    } else {
        crate::check_memory(&what, host.saturating_add(device), hint)
    }
}
