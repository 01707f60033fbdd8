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
use stream::{Job, Worker};

use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::device::Device;
use crate::{
    check, twin, AttnShape, BackendOptions, BufInner, Dtype, DynamicNtk, EventInner, FreqsInner,
    HostInner, IdInner, KernelError, Result, RopeFreqs, RopeShape, Rows, SampleArgs, Stream,
};

/// A CPU buffer (used for both device and host buffers).
#[derive(Clone)]
pub(crate) struct CpuBuf {
    data: Arc<RwLock<Vec<f32>>>,
}

/// Token ids and positions.
#[derive(Clone)]
pub(crate) struct CpuIds(Arc<RwLock<Vec<u32>>>);

impl CpuIds {
    fn read(&self) -> RwLockReadGuard<'_, Vec<u32>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, Vec<u32>> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A RoPE frequency table: kept on the host with its cos/sin per position
/// (grown on demand, shared by every layer that turns by it).
pub(crate) struct CpuFreqs(Mutex<ops::RopeTable>);

fn wrong(op: &'static str, what: &'static str) -> KernelError {
    KernelError::WrongBackend {
        op,
        device: "cpu".into(),
        what,
    }
}

fn buf<'a>(op: &'static str, b: &'a BufInner) -> Result<&'a CpuBuf> {
    match b {
        BufInner::Cpu(x) => Ok(x),
        BufInner::Cuda(_) => Err(wrong(op, "device buffer")),
    }
}

fn host<'a>(op: &'static str, b: &'a HostInner) -> Result<&'a CpuBuf> {
    match b {
        HostInner::Cpu(x) => Ok(x),
        HostInner::Cuda(_) => Err(wrong(op, "host buffer")),
    }
}

fn ids<'a>(op: &'static str, b: &'a IdInner) -> Result<&'a CpuIds> {
    match b {
        IdInner::Cpu(x) => Ok(x),
        IdInner::Cuda(_) => Err(wrong(op, "id buffer")),
    }
}

fn event<'a>(op: &'static str, e: &'a EventInner) -> Result<&'a CpuEvent> {
    match e {
        EventInner::Cpu(x) => Ok(x),
        EventInner::Cuda(_) => Err(wrong(op, "event")),
    }
}

impl CpuBuf {
    fn new(data: Vec<f32>) -> CpuBuf {
        CpuBuf {
            data: Arc::new(RwLock::new(data)),
        }
    }
    fn key(&self) -> usize {
        Arc::as_ptr(&self.data) as usize
    }
    pub(crate) fn same(&self, other: &CpuBuf) -> bool {
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
    /// GEMM's snapshot of its activations.
    gemm_x: Mutex<Vec<f32>>,
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

    /// A zeroed buffer; a failed allocation is an error, not an abort.
    fn zeroed<T: Clone + Default>(len: usize) -> Result<Vec<T>> {
        let mut data = Vec::new();
        data.try_reserve_exact(len)
            .map_err(|_| KernelError::OutOfMemory {
                device: "cpu".into(),
                bytes: (len as u64).saturating_mul(std::mem::size_of::<T>() as u64),
            })?;
        data.resize(len, T::default());
        Ok(data)
    }

    fn worker(&self, stream: Stream) -> Option<&Worker> {
        match stream {
            Stream::Copy => Some(&self.copy),
            Stream::Writeback => Some(&self.writeback),
            Stream::Compute => None,
        }
    }

    /// A copy of `src[..len]` if it aliases `out`, so ops can read and write safely.
    fn unalias(&self, src: &CpuBuf, out: &CpuBuf, len: usize) -> Option<CpuBuf> {
        src.same(out)
            .then(|| CpuBuf::new(src.read()[..len].to_vec()))
    }

    /// Attention for both ops: causal, or row `b` over keys
    /// `0 .. min(lens[b], kv_capacity)` (`a.q_len == 1`); windowed if
    /// `a.window` hides keys.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        op: &'static str,
        q: &BufInner,
        k: &BufInner,
        v: &BufInner,
        out: &BufInner,
        a: AttnShape,
        lens: Option<&[u32]>,
    ) -> Result<()> {
        let (q, k, v, out) = (buf(op, q)?, buf(op, k)?, buf(op, v)?, buf(op, out)?);
        if out.same(k) || out.same(v) {
            return Err(KernelError::Shape {
                op,
                device: "cpu".into(),
                shape: format!("{a:?}"),
                reason: "out must not alias k or v".into(),
            });
        }
        let q_len = a.batch * a.q_len * a.n_heads * a.head_dim;
        let kv_len = a.batch * a.kv_capacity * a.n_kv_heads * a.head_dim;
        let qa = self.unalias(q, out, q_len);
        let q = qa.as_ref().unwrap_or(q);
        let window = check::window(&a);
        let keys = |b: usize, j: usize| match lens {
            Some(l) => match (l[b] as usize).min(a.kv_capacity) {
                0 => 0..0,
                n => twin::visible_keys(n - 1, window),
            },
            None => twin::visible_keys(a.q_pos0 + j, window),
        };
        with_bufs(&[q, k, v], out, |r, o| {
            ops::attention(
                &r[0][..q_len],
                &r[1][..kv_len],
                &r[2][..kv_len],
                &mut o[..q_len],
                &a,
                keys,
            )
        });
        Ok(())
    }

    /// Checks the streams before an op on the compute stream (the caller).
    fn compute_ok(&self) -> Result<()> {
        self.copy.check()?;
        self.writeback.check()
    }
}

impl Device for CpuBackend {
    fn name(&self) -> String {
        match self.link_gbps {
            Some(g) => format!("cpu (f32, link paced to {g} GB/s)"),
            None => "cpu (f32)".to_string(),
        }
    }

    fn short_name(&self) -> String {
        "cpu".into()
    }

    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn link_gbps(&self) -> Option<f64> {
        self.link_gbps
    }

    fn alloc(&self, len: usize) -> Result<BufInner> {
        Ok(BufInner::Cpu(CpuBuf::new(Self::zeroed(len)?)))
    }

    fn upload(&self, data: &[f32]) -> Result<BufInner> {
        Ok(BufInner::Cpu(CpuBuf::new(data.to_vec())))
    }

    fn upload_owned(&self, data: Vec<f32>) -> Result<BufInner> {
        Ok(BufInner::Cpu(CpuBuf::new(data)))
    }

    fn upload_stored(&self, bytes: &[u8], src: Dtype) -> Result<BufInner> {
        self.upload_owned(crate::stored::to_f32(bytes, src))
    }

    fn download(&self, b: &BufInner, off: usize, len: usize) -> Result<Vec<f32>> {
        let b = buf("download", b)?;
        self.synchronize()?;
        Ok(b.read()[off..off + len].to_vec())
    }

    fn alloc_ids(&self, len: usize) -> Result<IdInner> {
        Ok(IdInner::Cpu(CpuIds(Arc::new(RwLock::new(Self::zeroed(
            len,
        )?)))))
    }

    fn write_ids(&self, dst: &IdInner, off: usize, data: &[u32]) -> Result<()> {
        ids("write_ids", dst)?.write()[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn read_ids(&self, src: &IdInner, off: usize, len: usize) -> Result<Vec<u32>> {
        Ok(ids("read_ids", src)?.read()[off..off + len].to_vec())
    }

    fn alloc_host(&self, len: usize, _pinned: bool) -> Result<(HostInner, bool)> {
        Ok((HostInner::Cpu(CpuBuf::new(Self::zeroed(len)?)), false))
    }

    fn host_write(&self, dst: &HostInner, off: usize, data: &[f32]) -> Result<()> {
        let dst = host("host_write", dst)?;
        // The contract: copies in flight that touch the buffer finish first.
        self.synchronize()?;
        dst.write()[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn host_read(&self, src: &HostInner, off: usize, len: usize) -> Result<Vec<f32>> {
        let src = host("host_read", src)?;
        self.synchronize()?;
        Ok(src.read()[off..off + len].to_vec())
    }

    fn copy_h2d(
        &self,
        stream: Stream,
        src: &HostInner,
        src_off: usize,
        dst: &BufInner,
        dst_off: usize,
        rows: Rows,
    ) -> Result<()> {
        let (s, d) = (host("copy_h2d", src)?, buf("copy_h2d", dst)?);
        self.copy(stream, "copy_h2d", s, src_off, d, dst_off, rows, true)
    }

    fn copy_d2h(
        &self,
        stream: Stream,
        src: &BufInner,
        src_off: usize,
        dst: &HostInner,
        dst_off: usize,
        rows: Rows,
    ) -> Result<()> {
        let (s, d) = (buf("copy_d2h", src)?, host("copy_d2h", dst)?);
        self.copy(stream, "copy_d2h", s, src_off, d, dst_off, rows, true)
    }

    fn copy_d2d(
        &self,
        stream: Stream,
        src: &BufInner,
        src_off: usize,
        dst: &BufInner,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        let (s, d) = (buf("copy_d2d", src)?, buf("copy_d2d", dst)?);
        let rows = Rows::contiguous(len);
        self.copy(stream, "copy_d2d", s, src_off, d, dst_off, rows, false)
    }

    fn record(&self, stream: Stream) -> Result<EventInner> {
        let ev = match self.worker(stream) {
            None => {
                self.compute_ok()?;
                CpuEvent::fired()
            }
            Some(w) => w.record()?,
        };
        Ok(EventInner::Cpu(ev))
    }

    fn wait(&self, stream: Stream, ev: &EventInner) -> Result<()> {
        let ev = event("wait", ev)?;
        match self.worker(stream) {
            None => {
                ev.wait()?;
                self.compute_ok()
            }
            Some(w) => {
                w.check()?;
                w.push(Job::Wait(ev.clone()))
            }
        }
    }

    fn synchronize(&self) -> Result<()> {
        // Both streams are drained before either failure is reported.
        let a = self.copy.record();
        let b = self.writeback.record();
        let a = a.and_then(|e| e.wait());
        let b = b.and_then(|e| e.wait());
        self.compute_ok()?;
        a.and(b).map(|_| ())
    }

    fn elapsed_us(&self, start: &EventInner, end: &EventInner) -> Result<f64> {
        elapsed_us(event("elapsed_us", start)?, event("elapsed_us", end)?)
    }

    #[cfg(test)]
    fn inject_panic(&self, stream: Stream, message: &'static str) -> Result<()> {
        match self.worker(stream) {
            Some(w) => w.push(Job::Run(Box::new(move |_| panic!("{message}")))),
            None => Ok(()),
        }
    }

    fn gemm(
        &self,
        x: &BufInner,
        x_off: usize,
        w: &BufInner,
        w_off: usize,
        out: &BufInner,
        out_off: usize,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let (x, w, out) = (buf("gemm", x)?, buf("gemm", w)?, buf("gemm", out)?);
        if out.same(w) {
            return Err(KernelError::Shape {
                op: "gemm",
                device: "cpu".into(),
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
            .unwrap_or_else(PoisonError::into_inner);
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

    fn rmsnorm(
        &self,
        x: &BufInner,
        x_off: usize,
        weight: &BufInner,
        out: &BufInner,
        out_off: usize,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        let op = "rmsnorm";
        let (x, weight, out) = (buf(op, x)?, buf(op, weight)?, buf(op, out)?);
        let len = rows * dim;
        if x.same(out) {
            // In place, or two ranges of one buffer that `Backend` has
            // checked do not overlap.
            return with_bufs(&[weight], out, |r, o| {
                let w = &r[0][..dim];
                if x_off == out_off {
                    ops::rmsnorm_in_place(&mut o[out_off..out_off + len], w, dim, eps);
                } else if x_off < out_off {
                    let (a, b) = o.split_at_mut(out_off);
                    ops::rmsnorm(&a[x_off..x_off + len], w, &mut b[..len], dim, eps);
                } else {
                    let (a, b) = o.split_at_mut(x_off);
                    ops::rmsnorm(&b[..len], w, &mut a[out_off..out_off + len], dim, eps);
                }
                Ok(())
            });
        }
        with_bufs(&[x, weight], out, |r, o| {
            ops::rmsnorm(
                &r[0][x_off..x_off + len],
                &r[1][..dim],
                &mut o[out_off..out_off + len],
                dim,
                eps,
            )
        });
        Ok(())
    }

    fn add_bias(
        &self,
        x: &BufInner,
        x_off: usize,
        bias: &BufInner,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let (x, bias) = (buf("add_bias", x)?, buf("add_bias", bias)?);
        with_bufs(&[bias], x, |r, o| {
            ops::add_bias(&mut o[x_off..x_off + rows * dim], &r[0][..dim], dim)
        });
        Ok(())
    }

    fn rope_freqs(
        &self,
        inv_freq: &[f32],
        attention_factor: f32,
        dynamic: Option<DynamicNtk>,
    ) -> Result<FreqsInner> {
        let table = ops::RopeTable::new(inv_freq, attention_factor, dynamic);
        Ok(FreqsInner::Cpu(CpuFreqs(Mutex::new(table))))
    }

    fn rope(
        &self,
        x: &BufInner,
        x_off: usize,
        pos: &IdInner,
        pos_off: usize,
        freqs: &RopeFreqs,
        r: RopeShape,
    ) -> Result<()> {
        let x = buf("rope", x)?;
        let FreqsInner::Cpu(CpuFreqs(table)) = &freqs.inner else {
            return Err(wrong("rope", "frequency table"));
        };
        let pos = ids("rope", pos)?.read();
        let positions = &pos[pos_off..pos_off + r.rows];
        if let Some(&p) = positions.iter().find(|&&p| p >= check::MAX_POSITION) {
            return Err(KernelError::Shape {
                op: "rope",
                device: "cpu".into(),
                shape: format!("{r:?}"),
                reason: format!(
                    "position {p} is beyond the {} positions RoPE supports",
                    check::MAX_POSITION
                ),
            });
        }
        let mut table = table.lock().unwrap_or_else(PoisonError::into_inner);
        table.ensure(positions);
        let span = (r.rows - 1) * r.row_stride + r.n_heads * r.head_dim;
        let mut g = x.write();
        ops::rope(
            &mut g[x_off..x_off + span],
            r.row_stride,
            r.n_heads,
            positions,
            &table,
            r.interleaved,
        );
        Ok(())
    }

    fn attention(
        &self,
        q: &BufInner,
        k: &BufInner,
        v: &BufInner,
        out: &BufInner,
        a: AttnShape,
        lens: Option<(&IdInner, usize)>,
    ) -> Result<()> {
        match lens {
            None => self.attend("attention", q, k, v, out, a, None),
            Some((lens, off)) => {
                let op = "attention_ragged";
                let lens = ids(op, lens)?.read()[off..off + a.batch].to_vec();
                self.attend(op, q, k, v, out, a, Some(&lens))
            }
        }
    }

    fn silu_gate(&self, gate: &BufInner, up: &BufInner, out: &BufInner, len: usize) -> Result<()> {
        let op = "silu_gate";
        let (gate, up, out) = (buf(op, gate)?, buf(op, up)?, buf(op, out)?);
        let ga = self.unalias(gate, out, len);
        let ua = self.unalias(up, out, len);
        let (gate, up) = (ga.as_ref().unwrap_or(gate), ua.as_ref().unwrap_or(up));
        with_bufs(&[gate, up], out, |r, o| {
            ops::silu_gate(&r[0][..len], &r[1][..len], &mut o[..len])
        });
        Ok(())
    }

    fn add(&self, a: &BufInner, b: &BufInner, out: &BufInner, len: usize) -> Result<()> {
        let (a, b, out) = (buf("add", a)?, buf("add", b)?, buf("add", out)?);
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

    fn scatter(
        &self,
        src: &BufInner,
        src_off: usize,
        dst: &BufInner,
        dst_off: usize,
        rows: Rows,
    ) -> Result<()> {
        let (s, d) = (buf("scatter", src)?, buf("scatter", dst)?);
        self.compute_ok()?;
        self.copy(
            Stream::Compute,
            "scatter",
            s,
            src_off,
            d,
            dst_off,
            rows,
            false,
        )
    }

    fn scatter_rows(
        &self,
        src: &BufInner,
        src_off: usize,
        dst: &BufInner,
        idx: &IdInner,
        idx_off: usize,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        let op = "scatter_rows";
        let (src, dst) = (buf(op, src)?, buf(op, dst)?);
        let idx = ids(op, idx)?.read();
        let idx = &idx[idx_off..idx_off + rows];
        with_bufs(&[src], dst, |r, o| {
            ops::scatter_rows(&r[0][src_off..src_off + rows * width], o, idx, width)
        });
        Ok(())
    }

    fn embedding(
        &self,
        table: &BufInner,
        id: &IdInner,
        ids_off: usize,
        out: &BufInner,
        out_off: usize,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let op = "embedding";
        let (table, out) = (buf(op, table)?, buf(op, out)?);
        if table.same(out) {
            return Err(KernelError::Shape {
                op,
                device: "cpu".into(),
                shape: format!("[{rows}, {dim}]"),
                reason: "out must not alias the table".into(),
            });
        }
        let id = ids(op, id)?.read();
        let id = &id[ids_off..ids_off + rows];
        with_bufs(&[table], out, |r, o| {
            let vocab = r[0].len() / dim;
            for (row, &i) in o[out_off..out_off + rows * dim]
                .chunks_exact_mut(dim)
                .zip(id)
            {
                match (i as usize) < vocab {
                    _ if i == crate::SKIP_ROW => {}
                    true => row.copy_from_slice(&r[0][i as usize * dim..][..dim]),
                    false => row.fill(0.0),
                }
            }
        });
        Ok(())
    }

    fn argmax(
        &self,
        x: &BufInner,
        rows: usize,
        cols: usize,
        out: &IdInner,
        out_off: usize,
    ) -> Result<()> {
        let x = buf("argmax", x)?.read();
        let mut o = ids("argmax", out)?.write();
        for (r, row) in x[..rows * cols].chunks_exact(cols).enumerate() {
            o[out_off + r] = twin::argmax_row(row);
        }
        Ok(())
    }

    fn sample(
        &self,
        x: &BufInner,
        rows: usize,
        cols: usize,
        out: &IdInner,
        out_off: usize,
        s: SampleArgs,
    ) -> Result<()> {
        let x = buf("sample", x)?.read();
        let mut o = ids("sample", out)?.write();
        for (r, row) in x[..rows * cols].chunks_exact(cols).enumerate() {
            o[out_off + r] = twin::sample_row(row, r, &s);
        }
        Ok(())
    }
}
