//! The CPU reference backend: f32, the oracle every test runs.
//!
//! **Buffers.** A device or host buffer is an `Arc<RwLock<Vec<f32>>>`. Ops lock
//! the buffers they touch (read for inputs, write for the output) in address
//! order, so the copy threads and the caller never deadlock; an input that
//! aliases the output is copied to a temporary first (activation-sized only:
//! weights are never inputs that alias an output).
//!
//! **No copy of weights per op.** GEMM runs on the weight buffer in place
//! through the `gemm` crate (the engine candle-core's CPU matmul uses, with
//! the same rayon parallelism), called with strides on the locked slices; dot
//! products in attention use candle-core's SIMD `VecOps::vec_dot`.
//!
//! **Streams.** The compute stream is the calling thread: ops run
//! synchronously, like candle's CPU device, and a compute event fires when it
//! is recorded. The copy and writeback streams are one worker thread each with
//! a FIFO of jobs (copies, event fires, event waits). `wait(Compute, ev)`
//! blocks the caller until `ev` fires; `wait(Copy | Writeback, ev)` enqueues a
//! wait on that thread. Errors on a worker surface at the next record, wait or
//! synchronize; a worker job that fails or panics (caught) marks its stream
//! failed and fails the events it was to fire, so a waiter gets
//! [`KernelError::StreamFailed`] naming the stream and the cause, never a
//! hang.
//!
//! **Stream clocks and pacing.** Each worker keeps its stream's clock, like a
//! DMA engine's: a job starts at the later of the end of the previous job and
//! the time it was enqueued (or the time the event it waits for fired), and
//! events recorded on the stream carry that clock's time. With `link_gbps`, a
//! host-device copy of `n` bytes occupies its stream for `n / bandwidth`
//! seconds (or the memcpy's own time, if longer) from its start: the worker
//! sleeps (without locks) to the end of that window, spinning the last
//! ~100 µs for precision, then runs the memcpy under the locks. The data
//! lands at the end of the window, so code that reads a destination without
//! waiting for the copy's event sees the old data, and tests catch it. The
//! rate is checked when the backend is built ([`LINK_GBPS_MIN`] ..=
//! [`LINK_GBPS_MAX`]) and every window is converted and added with checks. Because deadlines follow the
//! stream clock rather than the moment the thread woke up, a worker that the
//! OS schedules late catches up instead of losing bandwidth, so the link
//! keeps its set rate on a busy two-core machine. Copy and writeback are
//! paced independently, like a full-duplex PCIe link; device-to-device copies
//! are never paced.

mod ops;
mod stream;

pub(crate) use stream::{elapsed_us, CpuEvent};
use stream::{sleep_until, Job, Worker};

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::{
    check_range, mul_checked, AttnShape, BackendOptions, Dtype, KernelError, Result, Stream,
};

/// A CPU buffer (used for both device and host buffers).
#[derive(Clone)]
pub(crate) struct CpuBuf {
    data: Arc<RwLock<Vec<f32>>>,
    len: usize,
}

impl CpuBuf {
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    fn key(&self) -> usize {
        Arc::as_ptr(&self.data) as usize
    }
    fn same(&self, other: &CpuBuf) -> bool {
        Arc::ptr_eq(&self.data, &other.data)
    }
    fn read(&self) -> RwLockReadGuard<'_, Vec<f32>> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, Vec<f32>> {
        self.data.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Locks `reads` for reading and `write` for writing, in address order, and
/// runs `f` on the slices. `write` must not alias any of `reads` (callers copy
/// aliased inputs first); duplicate reads are locked once.
fn with_bufs<R>(
    reads: &[&CpuBuf],
    write: &CpuBuf,
    f: impl FnOnce(&[&[f32]], &mut [f32]) -> R,
) -> R {
    let mut order: Vec<&CpuBuf> = reads.to_vec();
    order.push(write);
    order.sort_by_key(|b| b.key());
    order.dedup_by_key(|b| b.key());
    let mut rguards: Vec<(usize, RwLockReadGuard<'_, Vec<f32>>)> = Vec::with_capacity(order.len());
    let mut wguard = None;
    for b in order {
        if b.same(write) {
            wguard = Some(b.write());
        } else {
            rguards.push((b.key(), b.read()));
        }
    }
    let slices: Vec<&[f32]> = reads
        .iter()
        .map(|r| {
            let i = rguards.iter().position(|(k, _)| *k == r.key()).unwrap_or(0);
            &rguards[i].1[..]
        })
        .collect();
    let mut w = wguard.unwrap_or_else(|| write.write());
    f(&slices, &mut w[..])
}

/// The link rates the CPU backend paces to, GB/s. Slower than 1 MB/s, a
/// model's copies would take hours; faster than 10 TB/s, pacing means nothing
/// (the memcpy itself is slower).
pub const LINK_GBPS_MIN: f64 = 1e-3;
pub const LINK_GBPS_MAX: f64 = 1e4;

pub(crate) struct CpuBackend {
    link_gbps: Option<f64>,
    copy: Worker,
    writeback: Worker,
    /// Reusable state of the compute stream's ops (boxed: the backend enum stays small).
    scratch: Box<Scratch>,
}

/// State the compute stream's ops reuse across calls.
#[derive(Default)]
struct Scratch {
    /// RoPE's cos/sin per position, grown on demand.
    rope_table: std::sync::Mutex<ops::RopeTable>,
    /// GEMM's snapshot of its activations.
    gemm_x: std::sync::Mutex<Vec<f32>>,
}

impl CpuBackend {
    pub(crate) fn new(opts: BackendOptions) -> Result<Self> {
        if let Some(d) = opts.dtype {
            if d != Dtype::F32 {
                return Err(KernelError::Unsupported {
                    op: match d {
                        Dtype::F16 => "f16 compute dtype",
                        _ => "bf16 compute dtype",
                    },
                    device: "cpu".into(),
                });
            }
        }
        if let Some(g) = opts.link_gbps {
            if !(LINK_GBPS_MIN..=LINK_GBPS_MAX).contains(&g) {
                return Err(KernelError::BadLinkRate {
                    gbps: g,
                    min: LINK_GBPS_MIN,
                    max: LINK_GBPS_MAX,
                });
            }
        }
        Ok(CpuBackend {
            link_gbps: opts.link_gbps,
            copy: Worker::spawn("copy")?,
            writeback: Worker::spawn("writeback")?,
            scratch: Box::default(),
        })
    }

    pub(crate) fn name(&self) -> String {
        match self.link_gbps {
            Some(g) => format!("cpu (f32, link paced to {g} GB/s)"),
            None => "cpu (f32)".to_string(),
        }
    }

    pub(crate) fn link_gbps(&self) -> Option<f64> {
        self.link_gbps
    }

    fn dev(&self) -> String {
        "cpu".to_string()
    }

    /// A zeroed buffer; a failed allocation is an error, not an abort.
    pub(crate) fn alloc(&self, len: usize) -> Result<CpuBuf> {
        let mut data = Vec::new();
        data.try_reserve_exact(len)
            .map_err(|_| KernelError::OutOfMemory {
                device: "cpu".into(),
                bytes: (len as u64).saturating_mul(std::mem::size_of::<f32>() as u64),
            })?;
        data.resize(len, 0.0);
        Ok(CpuBuf {
            data: Arc::new(RwLock::new(data)),
            len,
        })
    }

    pub(crate) fn upload(&self, data: &[f32]) -> CpuBuf {
        CpuBuf {
            data: Arc::new(RwLock::new(data.to_vec())),
            len: data.len(),
        }
    }

    pub(crate) fn download(&self, buf: &CpuBuf, off: usize, len: usize) -> Result<Vec<f32>> {
        check_range("download", "cpu", "buffer", off, len, buf.len)?;
        self.synchronize()?;
        Ok(buf.read()[off..off + len].to_vec())
    }

    pub(crate) fn host_write(&self, dst: &CpuBuf, off: usize, data: &[f32]) -> Result<()> {
        check_range("host_write", "cpu", "host buffer", off, data.len(), dst.len)?;
        dst.write()[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }

    pub(crate) fn host_read(&self, src: &CpuBuf, off: usize, len: usize) -> Result<Vec<f32>> {
        check_range("host_read", "cpu", "host buffer", off, len, src.len)?;
        Ok(src.read()[off..off + len].to_vec())
    }

    fn worker(&self, stream: Stream) -> Option<&Worker> {
        match stream {
            Stream::Copy => Some(&self.copy),
            Stream::Writeback => Some(&self.writeback),
            Stream::Compute => None,
        }
    }

    /// Any copy: checks ranges now, runs on the stream (paced if `paced` and a
    /// link bandwidth is set).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copy(
        &self,
        stream: Stream,
        op: &'static str,
        src: &CpuBuf,
        src_off: usize,
        dst: &CpuBuf,
        dst_off: usize,
        len: usize,
        paced: bool,
    ) -> Result<()> {
        check_range(op, "cpu", "source", src_off, len, src.len)?;
        check_range(op, "cpu", "destination", dst_off, len, dst.len)?;
        let (src, dst) = (src.clone(), dst.clone());
        let gbps = if paced { self.link_gbps } else { None };
        let job = move |clock: &mut Instant| -> Result<()> {
            let start = *clock;
            // The link's time for these bytes; the data lands at the end of it.
            let window = match gbps {
                Some(g) => {
                    let secs = (len as f64 * 4.0) / (g * 1e9);
                    let d = Duration::try_from_secs_f64(secs).map_err(|e| KernelError::Shape {
                        op,
                        device: "cpu".into(),
                        shape: format!("{len} elements at {g} GB/s"),
                        reason: format!("the paced copy's time ({secs} s) is not a duration: {e}"),
                    })?;
                    let deadline = start.checked_add(d).ok_or_else(|| KernelError::Shape {
                        op,
                        device: "cpu".into(),
                        shape: format!("{len} elements at {g} GB/s"),
                        reason: format!(
                            "the paced copy's end ({secs} s from now) overflows the clock"
                        ),
                    })?;
                    sleep_until(deadline);
                    Some(d)
                }
                None => None,
            };
            let t0 = Instant::now();
            if src.same(&dst) {
                dst.write().copy_within(src_off..src_off + len, dst_off);
            } else {
                with_bufs(&[&src], &dst, |r, w| {
                    w[dst_off..dst_off + len].copy_from_slice(&r[0][src_off..src_off + len])
                });
            }
            let work = t0.elapsed();
            // Saturating: `start + window` was checked above, and `work` is real time.
            *clock = start
                .checked_add(window.map_or(work, |w| w.max(work)))
                .unwrap_or_else(Instant::now);
            Ok(())
        };
        match self.worker(stream) {
            Some(w) => {
                w.check()?;
                w.push(Job::Run(Box::new(job)))
            }
            None => job(&mut Instant::now()),
        }
    }

    pub(crate) fn record(&self, stream: Stream) -> Result<CpuEvent> {
        match self.worker(stream) {
            None => {
                self.copy.check()?;
                self.writeback.check()?;
                Ok(CpuEvent::fired())
            }
            Some(w) => w.record(),
        }
    }

    pub(crate) fn wait(&self, stream: Stream, ev: &CpuEvent) -> Result<()> {
        match self.worker(stream) {
            None => {
                ev.wait()?;
                self.copy.check()?;
                self.writeback.check()
            }
            Some(w) => {
                w.check()?;
                w.push(Job::Wait(ev.clone()))
            }
        }
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        // Both streams are drained before either failure is reported.
        let a = self.copy.record();
        let b = self.writeback.record();
        let a = a.and_then(|e| e.wait());
        let b = b.and_then(|e| e.wait());
        self.copy.check()?;
        self.writeback.check()?;
        a.and(b).map(|_| ())
    }

    /// Test hook: a job on `stream` that panics with `message`.
    #[cfg(test)]
    pub(crate) fn inject_panic(&self, stream: Stream, message: &'static str) -> Result<()> {
        match self.worker(stream) {
            Some(w) => w.push(Job::Run(Box::new(move |_| panic!("{message}")))),
            None => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm(
        &self,
        x: &CpuBuf,
        x_off: usize,
        w: &CpuBuf,
        w_off: usize,
        out: &CpuBuf,
        out_off: usize,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let d = self.dev();
        check_range(
            "gemm",
            &d,
            "x",
            x_off,
            mul_checked("gemm", &d, &[m, k])?,
            x.len,
        )?;
        check_range(
            "gemm",
            &d,
            "w",
            w_off,
            mul_checked("gemm", &d, &[n, k])?,
            w.len,
        )?;
        check_range(
            "gemm",
            &d,
            "out",
            out_off,
            mul_checked("gemm", &d, &[m, n])?,
            out.len,
        )?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if out.same(w) {
            return Err(KernelError::Shape {
                op: "gemm",
                device: d,
                shape: format!("m={m} n={n} k={k}"),
                reason: "out must not alias the weights".into(),
            });
        }
        // Snapshot the activations under a short read lock and compute without
        // holding it: a copy stream writing elsewhere in `x` (the next chunk of
        // activations) must not wait for this GEMM, just as a DMA engine on a
        // GPU would not. The snapshot moves m*k values against 2*m*n*k FLOPs,
        // reuses one scratch buffer (no allocation per call once warm), and
        // also makes `out` aliasing `x` safe.
        let mut xs = self
            .scratch
            .gemm_x
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        xs.clear();
        xs.extend_from_slice(&x.read()[x_off..x_off + m * k]);
        with_bufs(&[w], out, |r, o| {
            ops::gemm(
                &xs,
                &r[0][w_off..w_off + n * k],
                &mut o[out_off..out_off + m * n],
                m,
                n,
                k,
            )
        });
        Ok(())
    }

    /// A copy of `src[..len]` if it aliases `out`, so ops can read and write safely.
    fn unalias(&self, src: &CpuBuf, out: &CpuBuf, len: usize) -> Option<CpuBuf> {
        src.same(out).then(|| self.upload(&src.read()[..len]))
    }

    pub(crate) fn rmsnorm(
        &self,
        x: &CpuBuf,
        weight: &CpuBuf,
        out: &CpuBuf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        let d = self.dev();
        let len = mul_checked("rmsnorm", &d, &[rows, dim])?;
        check_range("rmsnorm", &d, "x", 0, len, x.len)?;
        check_range("rmsnorm", &d, "weight", 0, dim, weight.len)?;
        check_range("rmsnorm", &d, "out", 0, len, out.len)?;
        let xa = self.unalias(x, out, len);
        let x = xa.as_ref().unwrap_or(x);
        with_bufs(&[x, weight], out, |r, o| {
            ops::rmsnorm(&r[0][..len], &r[1][..dim], &mut o[..len], dim, eps)
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rope(
        &self,
        x: &CpuBuf,
        x_off: usize,
        rows: usize,
        row_stride: usize,
        n_heads: usize,
        head_dim: usize,
        positions: &[u32],
        theta: f32,
        interleaved: bool,
    ) -> Result<()> {
        let d = self.dev();
        let shape =
            || format!("rows={rows} row_stride={row_stride} n_heads={n_heads} head_dim={head_dim}");
        let bad = |reason: String| KernelError::Shape {
            op: "rope",
            device: "cpu".into(),
            shape: shape(),
            reason,
        };
        if !head_dim.is_multiple_of(2) {
            return Err(bad("head_dim must be even".into()));
        }
        if positions.len() != rows {
            return Err(bad(format!(
                "{} positions given for {rows} rows",
                positions.len()
            )));
        }
        let width = mul_checked("rope", &d, &[n_heads, head_dim])?;
        if rows == 0 || width == 0 {
            return Ok(());
        }
        if width > row_stride {
            return Err(bad("n_heads * head_dim is wider than row_stride".into()));
        }
        let span = mul_checked("rope", &d, &[rows - 1, row_stride])?
            .checked_add(width)
            .ok_or_else(|| bad("size overflows".into()))?;
        check_range("rope", &d, "x", x_off, span, x.len)?;
        const MAX_POSITION: u32 = 1 << 22;
        if let Some(&p) = positions.iter().find(|&&p| p >= MAX_POSITION) {
            return Err(bad(format!(
                "position {p} is beyond the {MAX_POSITION} positions RoPE supports"
            )));
        }
        let mut table = self
            .scratch
            .rope_table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        table.ensure(theta, head_dim, positions);
        let mut g = x.write();
        ops::rope(
            &mut g[x_off..x_off + span],
            row_stride,
            n_heads,
            positions,
            &table,
            interleaved,
        );
        Ok(())
    }

    pub(crate) fn attention(
        &self,
        q: &CpuBuf,
        k: &CpuBuf,
        v: &CpuBuf,
        out: &CpuBuf,
        a: AttnShape,
    ) -> Result<()> {
        let d = self.dev();
        let bad = |reason: String| KernelError::Shape {
            op: "attention",
            device: "cpu".into(),
            shape: format!("{a:?}"),
            reason,
        };
        if a.n_kv_heads == 0 || !a.n_heads.is_multiple_of(a.n_kv_heads) {
            return Err(bad("n_heads must be a multiple of n_kv_heads".into()));
        }
        if a.q_len > 0 && a.q_pos0 + a.q_len > a.kv_capacity {
            return Err(bad(format!(
                "queries reach position {} but the cache holds {} positions",
                a.q_pos0 + a.q_len - 1,
                a.kv_capacity
            )));
        }
        let q_len = mul_checked("attention", &d, &[a.batch, a.q_len, a.n_heads, a.head_dim])?;
        let kv_len = mul_checked(
            "attention",
            &d,
            &[a.batch, a.kv_capacity, a.n_kv_heads, a.head_dim],
        )?;
        check_range("attention", &d, "q", 0, q_len, q.len)?;
        check_range("attention", &d, "k", 0, kv_len, k.len)?;
        check_range("attention", &d, "v", 0, kv_len, v.len)?;
        check_range("attention", &d, "out", 0, q_len, out.len)?;
        if out.same(k) || out.same(v) {
            return Err(bad("out must not alias k or v".into()));
        }
        let qa = self.unalias(q, out, q_len);
        let q = qa.as_ref().unwrap_or(q);
        with_bufs(&[q, k, v], out, |r, o| {
            ops::attention(
                &r[0][..q_len],
                &r[1][..kv_len],
                &r[2][..kv_len],
                &mut o[..q_len],
                &a,
            )
        });
        Ok(())
    }

    pub(crate) fn silu_gate(
        &self,
        gate: &CpuBuf,
        up: &CpuBuf,
        out: &CpuBuf,
        len: usize,
    ) -> Result<()> {
        let d = self.dev();
        check_range("silu_gate", &d, "gate", 0, len, gate.len)?;
        check_range("silu_gate", &d, "up", 0, len, up.len)?;
        check_range("silu_gate", &d, "out", 0, len, out.len)?;
        let ga = self.unalias(gate, out, len);
        let ua = self.unalias(up, out, len);
        let (gate, up) = (ga.as_ref().unwrap_or(gate), ua.as_ref().unwrap_or(up));
        with_bufs(&[gate, up], out, |r, o| {
            ops::silu_gate(&r[0][..len], &r[1][..len], &mut o[..len])
        });
        Ok(())
    }

    pub(crate) fn add(&self, a: &CpuBuf, b: &CpuBuf, out: &CpuBuf, len: usize) -> Result<()> {
        let d = self.dev();
        check_range("add", &d, "a", 0, len, a.len)?;
        check_range("add", &d, "b", 0, len, b.len)?;
        check_range("add", &d, "out", 0, len, out.len)?;
        match (a.same(out), b.same(out)) {
            (true, true) => {
                let mut g = out.write();
                g[..len].iter_mut().for_each(|v| *v += *v);
            }
            (true, false) => with_bufs(&[b], out, |r, o| {
                ops::add_assign(&mut o[..len], &r[0][..len])
            }),
            (false, true) => with_bufs(&[a], out, |r, o| {
                ops::add_assign(&mut o[..len], &r[0][..len])
            }),
            (false, false) => with_bufs(&[a, b], out, |r, o| {
                ops::add(&r[0][..len], &r[1][..len], &mut o[..len])
            }),
        }
        Ok(())
    }

    pub(crate) fn embedding(
        &self,
        table: &CpuBuf,
        ids: &[u32],
        out: &CpuBuf,
        dim: usize,
    ) -> Result<()> {
        let d = self.dev();
        let len = mul_checked("embedding", &d, &[ids.len(), dim])?;
        check_range("embedding", &d, "out", 0, len, out.len)?;
        if dim == 0 {
            return Ok(());
        }
        let vocab = table.len / dim;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(KernelError::Shape {
                op: "embedding",
                device: d,
                shape: format!("table [{vocab}, {dim}]"),
                reason: format!("token id {bad} is outside the vocabulary of {vocab}"),
            });
        }
        if table.same(out) {
            return Err(KernelError::Shape {
                op: "embedding",
                device: d,
                shape: format!("table [{vocab}, {dim}]"),
                reason: "out must not alias the table".into(),
            });
        }
        with_bufs(&[table], out, |r, o| {
            for (row, &id) in o[..len].chunks_exact_mut(dim).zip(ids) {
                let s = id as usize * dim;
                row.copy_from_slice(&r[0][s..s + dim]);
            }
        });
        Ok(())
    }

    pub(crate) fn argmax(&self, x: &CpuBuf, rows: usize, cols: usize) -> Result<Vec<u32>> {
        let d = self.dev();
        let len = mul_checked("argmax", &d, &[rows, cols])?;
        check_range("argmax", &d, "x", 0, len, x.len)?;
        if cols == 0 {
            return Err(KernelError::Shape {
                op: "argmax",
                device: d,
                shape: format!("[{rows}, {cols}]"),
                reason: "rows are empty".into(),
            });
        }
        let g = x.read();
        Ok(g[..len].chunks_exact(cols).map(ops::argmax_row).collect())
    }
}
