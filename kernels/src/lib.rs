//! kvpr's compute backends: one [`Backend`] type that dispatches with an `enum`
//! to the CPU reference backend (f32, candle-core's kernels, a copy thread that
//! can be paced to a link bandwidth) or the CUDA backend (cudarc with dynamic
//! loading: it always compiles and reports [`KernelError::NoDriver`] where no
//! driver is found).
//!
//! The API is the one the runtime needs: device buffers ([`DeviceBuf`], in the
//! backend's compute dtype), host buffers for the KV/activation store
//! ([`HostBuf`], pinned on CUDA), three streams ([`Stream::Copy`],
//! [`Stream::Compute`], [`Stream::Writeback`]) ordered by [`Event`]s, copies
//! between them, and the compute ops of a Llama decoder (GEMM, RMSNorm, RoPE,
//! attention, SiLU-gate, add, embedding, argmax). Offsets and lengths are in
//! elements; every shape and range is checked and reported as a typed
//! [`KernelError`], never a panic.
//!
//! This crate must not know about models, plans or files: it moves and
//! computes numbers. Deciding what to move is `scheduler`'s job, doing it in
//! order is `runtime`'s.

mod cpu;
mod cuda;
mod error;

#[cfg(test)]
mod tests;

pub use cpu::{LINK_GBPS_MAX, LINK_GBPS_MIN};
pub use error::{KernelError, Result};

use std::str::FromStr;

/// Which device a backend runs on: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || KernelError::BadDeviceSpec {
            spec: s.to_string(),
        };
        match t.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => match t.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceSpec::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The three streams of a backend. `Copy` brings data host-to-device,
/// `Writeback` takes it device-to-host, `Compute` runs the ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Copy,
    Compute,
    Writeback,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Copy => "copy",
            Stream::Compute => "compute",
            Stream::Writeback => "writeback",
        }
    }
}

/// Element type of device buffers (the compute dtype): the plan's own
/// [`plans::Dtype`], so a backend's dtype and a workload's are one type.
/// The CPU backend is f32 only.
pub use plans::Dtype;

/// How to build a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BackendOptions {
    /// CPU only: pace the copy and writeback streams to this bandwidth
    /// (GB/s = 1e9 B/s), so that overlap is real on a machine with no GPU.
    /// Within [`LINK_GBPS_MIN`]..=[`LINK_GBPS_MAX`], else
    /// [`KernelError::BadLinkRate`].
    pub link_gbps: Option<f64>,
    /// Compute dtype. CPU: f32 only (None = f32). CUDA: None = f16.
    pub dtype: Option<Dtype>,
}

/// Shape of an [`Backend::attention`] call.
///
/// `q` is `[batch, q_len, n_heads * head_dim]`; `k` and `v` are
/// `[batch, kv_capacity, n_kv_heads * head_dim]`. Query `j` of row `b` sits at
/// position `q_pos0 + j` and attends causally to keys `0 ..= q_pos0 + j`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnShape {
    pub batch: usize,
    pub q_len: usize,
    pub q_pos0: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub kv_capacity: usize,
    pub scale: f32,
}

/// A compute backend. See the crate docs.
pub struct Backend {
    spec: DeviceSpec,
    inner: Inner,
}

enum Inner {
    Cpu(cpu::CpuBackend),
    Cuda(Box<cuda::CudaBackend>),
}

/// Device memory: `len` elements of the backend's compute dtype.
pub struct DeviceBuf {
    inner: BufInner,
}

enum BufInner {
    Cpu(cpu::CpuBuf),
    Cuda(cuda::CudaBuf),
}

/// Host memory for the KV/activation store: pinned on CUDA, plain on CPU.
pub struct HostBuf {
    inner: HostInner,
}

enum HostInner {
    Cpu(cpu::CpuBuf),
    Cuda(cuda::CudaHostBuf),
}

/// A point on a stream; fires when the stream reaches it.
pub struct Event {
    inner: EventInner,
}

enum EventInner {
    Cpu(cpu::CpuEvent),
    Cuda(cuda::CudaEv),
}

impl DeviceBuf {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.inner {
            BufInner::Cpu(b) => b.len(),
            BufInner::Cuda(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl HostBuf {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.inner {
            HostInner::Cpu(b) => b.len(),
            HostInner::Cuda(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the buffer is page-locked (always false on the CPU backend).
    pub fn is_pinned(&self) -> bool {
        match &self.inner {
            HostInner::Cpu(_) => false,
            HostInner::Cuda(b) => b.is_pinned(),
        }
    }
}

macro_rules! cpu_bufs {
    ($self:ident, $op:expr, [$($b:ident),*], $body:expr) => {{
        let name = $self.name();
        $(
            let $b = match &$b.inner {
                BufInner::Cpu(x) => x,
                BufInner::Cuda(_) => return Err(KernelError::WrongBackend { op: $op, device: name, what: "device buffer" }),
            };
        )*
        let _ = &name;
        $body
    }};
}

macro_rules! cuda_bufs {
    ($self:ident, $op:expr, [$($b:ident),*], $body:expr) => {{
        let name = $self.name();
        $(
            let $b = match &$b.inner {
                BufInner::Cuda(x) => x,
                BufInner::Cpu(_) => return Err(KernelError::WrongBackend { op: $op, device: name, what: "device buffer" }),
            };
        )*
        let _ = &name;
        $body
    }};
}

impl Backend {
    /// Builds a backend. CUDA: probes for the driver first and returns
    /// [`KernelError::NoDriver`] when there is none.
    pub fn new(spec: DeviceSpec, opts: BackendOptions) -> Result<Backend> {
        let inner = match spec {
            DeviceSpec::Cpu => Inner::Cpu(cpu::CpuBackend::new(opts)?),
            DeviceSpec::Cuda(ordinal) => {
                Inner::Cuda(Box::new(cuda::CudaBackend::new(ordinal, opts)?))
            }
        };
        Ok(Backend { spec, inner })
    }

    /// The device this backend was built for.
    pub fn spec(&self) -> DeviceSpec {
        self.spec
    }

    /// Human-readable device name, e.g. `cpu (f32, link paced to 2 GB/s)`.
    pub fn name(&self) -> String {
        match &self.inner {
            Inner::Cpu(b) => b.name(),
            Inner::Cuda(b) => b.name(),
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self.inner, Inner::Cuda(_))
    }

    /// The compute dtype of device buffers.
    pub fn dtype(&self) -> Dtype {
        match &self.inner {
            Inner::Cpu(_) => Dtype::F32,
            Inner::Cuda(b) => b.dtype(),
        }
    }

    /// The link pacing of the CPU backend, GB/s (None: unpaced, or CUDA).
    pub fn link_gbps(&self) -> Option<f64> {
        match &self.inner {
            Inner::Cpu(b) => b.link_gbps(),
            Inner::Cuda(_) => None,
        }
    }

    /// A zeroed device buffer of `len` elements.
    pub fn alloc(&self, len: usize) -> Result<DeviceBuf> {
        let inner = match &self.inner {
            Inner::Cpu(b) => BufInner::Cpu(b.alloc(len)?),
            Inner::Cuda(b) => BufInner::Cuda(b.alloc(len)?),
        };
        Ok(DeviceBuf { inner })
    }

    /// A device buffer holding `data` (converted to the compute dtype); synchronous.
    pub fn upload(&self, data: &[f32]) -> Result<DeviceBuf> {
        let inner = match &self.inner {
            Inner::Cpu(b) => BufInner::Cpu(b.upload(data)),
            Inner::Cuda(b) => BufInner::Cuda(b.upload(data)?),
        };
        Ok(DeviceBuf { inner })
    }

    /// Elements `off..off+len` of `buf` as f32, after every stream has finished.
    pub fn download(&self, buf: &DeviceBuf, off: usize, len: usize) -> Result<Vec<f32>> {
        match &self.inner {
            Inner::Cpu(b) => cpu_bufs!(self, "download", [buf], b.download(buf, off, len)),
            Inner::Cuda(b) => cuda_bufs!(self, "download", [buf], b.download(buf, off, len)),
        }
    }

    /// A zeroed host buffer of `len` elements (pinned on CUDA).
    pub fn alloc_host(&self, len: usize) -> Result<HostBuf> {
        let inner = match &self.inner {
            Inner::Cpu(b) => HostInner::Cpu(b.alloc(len)?),
            Inner::Cuda(b) => HostInner::Cuda(b.alloc_host(len, true)?),
        };
        Ok(HostBuf { inner })
    }

    /// A zeroed pageable (not page-locked) host buffer, for measuring the
    /// pageable link. On the CPU backend this is the same as [`Backend::alloc_host`].
    pub fn alloc_host_pageable(&self, len: usize) -> Result<HostBuf> {
        let inner = match &self.inner {
            Inner::Cpu(b) => HostInner::Cpu(b.alloc(len)?),
            Inner::Cuda(b) => HostInner::Cuda(b.alloc_host(len, false)?),
        };
        Ok(HostBuf { inner })
    }

    fn host_cpu<'a>(&self, op: &'static str, h: &'a HostBuf) -> Result<&'a cpu::CpuBuf> {
        match &h.inner {
            HostInner::Cpu(x) => Ok(x),
            HostInner::Cuda(_) => Err(KernelError::WrongBackend {
                op,
                device: self.name(),
                what: "host buffer",
            }),
        }
    }

    fn host_cuda<'a>(&self, op: &'static str, h: &'a HostBuf) -> Result<&'a cuda::CudaHostBuf> {
        match &h.inner {
            HostInner::Cuda(x) => Ok(x),
            HostInner::Cpu(_) => Err(KernelError::WrongBackend {
                op,
                device: self.name(),
                what: "host buffer",
            }),
        }
    }

    /// Writes `data` at `off`; waits for in-flight copies that touch those elements.
    pub fn host_write(&self, dst: &HostBuf, off: usize, data: &[f32]) -> Result<()> {
        match &self.inner {
            Inner::Cpu(b) => b.host_write(self.host_cpu("host_write", dst)?, off, data),
            Inner::Cuda(b) => b.host_write(self.host_cuda("host_write", dst)?, off, data),
        }
    }

    /// Reads elements `off..off+len`; waits for in-flight copies that touch them.
    pub fn host_read(&self, src: &HostBuf, off: usize, len: usize) -> Result<Vec<f32>> {
        match &self.inner {
            Inner::Cpu(b) => b.host_read(self.host_cpu("host_read", src)?, off, len),
            Inner::Cuda(b) => b.host_read(self.host_cuda("host_read", src)?, off, len),
        }
    }

    /// Copies `len` elements host-to-device on `stream`; asynchronous.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_h2d(
        &self,
        stream: Stream,
        src: &HostBuf,
        src_off: usize,
        dst: &DeviceBuf,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        match &self.inner {
            Inner::Cpu(b) => {
                let s = self.host_cpu("copy_h2d", src)?;
                cpu_bufs!(
                    self,
                    "copy_h2d",
                    [dst],
                    b.copy(stream, "copy_h2d", s, src_off, dst, dst_off, len, true)
                )
            }
            Inner::Cuda(b) => {
                let s = self.host_cuda("copy_h2d", src)?;
                cuda_bufs!(
                    self,
                    "copy_h2d",
                    [dst],
                    b.copy_h2d(stream, s, src_off, dst, dst_off, len)
                )
            }
        }
    }

    /// Copies `len` elements device-to-host on `stream`; asynchronous.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_d2h(
        &self,
        stream: Stream,
        src: &DeviceBuf,
        src_off: usize,
        dst: &HostBuf,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        match &self.inner {
            Inner::Cpu(b) => {
                let d = self.host_cpu("copy_d2h", dst)?;
                cpu_bufs!(
                    self,
                    "copy_d2h",
                    [src],
                    b.copy(stream, "copy_d2h", src, src_off, d, dst_off, len, true)
                )
            }
            Inner::Cuda(b) => {
                let d = self.host_cuda("copy_d2h", dst)?;
                cuda_bufs!(
                    self,
                    "copy_d2h",
                    [src],
                    b.copy_d2h(stream, src, src_off, d, dst_off, len)
                )
            }
        }
    }

    /// Copies `len` elements device-to-device on `stream`; asynchronous, never paced.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_d2d(
        &self,
        stream: Stream,
        src: &DeviceBuf,
        src_off: usize,
        dst: &DeviceBuf,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        match &self.inner {
            Inner::Cpu(b) => cpu_bufs!(
                self,
                "copy_d2d",
                [src, dst],
                b.copy(stream, "copy_d2d", src, src_off, dst, dst_off, len, false)
            ),
            Inner::Cuda(b) => cuda_bufs!(
                self,
                "copy_d2d",
                [src, dst],
                b.copy_d2d(stream, src, src_off, dst, dst_off, len)
            ),
        }
    }

    /// An event that fires when `stream` reaches this point. Reports an earlier
    /// failure of that stream.
    pub fn record(&self, stream: Stream) -> Result<Event> {
        let inner = match &self.inner {
            Inner::Cpu(b) => EventInner::Cpu(b.record(stream)?),
            Inner::Cuda(b) => EventInner::Cuda(b.record(stream)?),
        };
        Ok(Event { inner })
    }

    /// Makes `stream` wait for `ev`. CPU: on the compute stream this blocks the caller.
    pub fn wait(&self, stream: Stream, ev: &Event) -> Result<()> {
        match (&self.inner, &ev.inner) {
            (Inner::Cpu(b), EventInner::Cpu(e)) => b.wait(stream, e),
            (Inner::Cuda(b), EventInner::Cuda(e)) => b.wait(stream, e),
            _ => Err(KernelError::WrongBackend {
                op: "wait",
                device: self.name(),
                what: "event",
            }),
        }
    }

    /// Waits until every stream has finished its work; reports stream failures.
    pub fn synchronize(&self) -> Result<()> {
        match &self.inner {
            Inner::Cpu(b) => b.synchronize(),
            Inner::Cuda(b) => b.synchronize(),
        }
    }

    /// Microseconds from `start` to `end`; waits for both to fire.
    pub fn elapsed_us(&self, start: &Event, end: &Event) -> Result<f64> {
        match (&self.inner, &start.inner, &end.inner) {
            (Inner::Cpu(_), EventInner::Cpu(a), EventInner::Cpu(b)) => cpu::elapsed_us(a, b),
            (Inner::Cuda(c), EventInner::Cuda(a), EventInner::Cuda(b)) => c.elapsed_us(a, b),
            _ => Err(KernelError::WrongBackend {
                op: "elapsed_us",
                device: self.name(),
                what: "event",
            }),
        }
    }

    /// Test hook: makes `stream`'s worker panic (CPU backend; no-op elsewhere).
    #[cfg(test)]
    pub(crate) fn inject_panic(&self, stream: Stream, message: &'static str) -> Result<()> {
        match &self.inner {
            Inner::Cpu(b) => b.inject_panic(stream, message),
            Inner::Cuda(_) => Ok(()),
        }
    }

    /// `out[m, n] = x[m, k] . w[n, k]^T` (w row-major `[n, k]`, like `nn.Linear`),
    /// at element offsets `x_off`, `w_off`, `out_off`. On the compute stream.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        x: &DeviceBuf,
        x_off: usize,
        w: &DeviceBuf,
        w_off: usize,
        out: &DeviceBuf,
        out_off: usize,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        match &self.inner {
            Inner::Cpu(b) => cpu_bufs!(
                self,
                "gemm",
                [x, w, out],
                b.gemm(x, x_off, w, w_off, out, out_off, m, n, k)
            ),
            Inner::Cuda(b) => cuda_bufs!(
                self,
                "gemm",
                [x, w, out],
                b.gemm(x, x_off, w, w_off, out, out_off, m, n, k)
            ),
        }
    }

    /// RMSNorm of `rows` rows of `dim`: `out = x / sqrt(mean(x^2) + eps) * weight`.
    /// `out` may alias `x`.
    pub fn rmsnorm(
        &self,
        x: &DeviceBuf,
        weight: &DeviceBuf,
        out: &DeviceBuf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        match &self.inner {
            Inner::Cpu(b) => cpu_bufs!(
                self,
                "rmsnorm",
                [x, weight, out],
                b.rmsnorm(x, weight, out, rows, dim, eps)
            ),
            Inner::Cuda(b) => Err(b.unsupported("rmsnorm")),
        }
    }

    /// Rotary embedding in place on `rows` rows starting at `x_off`, `row_stride`
    /// elements apart, each `n_heads` heads of `head_dim`; row `r` is at
    /// `positions[r]`. `interleaved`: GGUF/llama.cpp pairs `(2i, 2i+1)`; else the
    /// Hugging Face `rotate_half` pairs `(i, i + head_dim/2)`.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        x: &DeviceBuf,
        x_off: usize,
        rows: usize,
        row_stride: usize,
        n_heads: usize,
        head_dim: usize,
        positions: &[u32],
        theta: f32,
        interleaved: bool,
    ) -> Result<()> {
        match &self.inner {
            Inner::Cpu(b) => cpu_bufs!(
                self,
                "rope",
                [x],
                b.rope(
                    x,
                    x_off,
                    rows,
                    row_stride,
                    n_heads,
                    head_dim,
                    positions,
                    theta,
                    interleaved
                )
            ),
            Inner::Cuda(b) => Err(b.unsupported("rope")),
        }
    }

    /// Causal grouped-query attention; see [`AttnShape`]. Softmax in f32.
    pub fn attention(
        &self,
        q: &DeviceBuf,
        k: &DeviceBuf,
        v: &DeviceBuf,
        out: &DeviceBuf,
        a: AttnShape,
    ) -> Result<()> {
        match &self.inner {
            Inner::Cpu(b) => cpu_bufs!(
                self,
                "attention",
                [q, k, v, out],
                b.attention(q, k, v, out, a)
            ),
            Inner::Cuda(b) => Err(b.unsupported("attention")),
        }
    }

    /// `out = silu(gate) * up` over `len` elements. `out` may alias an input.
    pub fn silu_gate(
        &self,
        gate: &DeviceBuf,
        up: &DeviceBuf,
        out: &DeviceBuf,
        len: usize,
    ) -> Result<()> {
        match &self.inner {
            Inner::Cpu(b) => cpu_bufs!(
                self,
                "silu_gate",
                [gate, up, out],
                b.silu_gate(gate, up, out, len)
            ),
            Inner::Cuda(b) => Err(b.unsupported("silu_gate")),
        }
    }

    /// `out = a + b` over `len` elements. `out` may alias `a` (or `b`).
    pub fn add(&self, a: &DeviceBuf, b: &DeviceBuf, out: &DeviceBuf, len: usize) -> Result<()> {
        match &self.inner {
            Inner::Cpu(be) => cpu_bufs!(self, "add", [a, b, out], be.add(a, b, out, len)),
            Inner::Cuda(be) => Err(be.unsupported("add")),
        }
    }

    /// Row `ids[i]` of `table` (`[vocab, dim]`) into row `i` of `out`.
    pub fn embedding(
        &self,
        table: &DeviceBuf,
        ids: &[u32],
        out: &DeviceBuf,
        dim: usize,
    ) -> Result<()> {
        match &self.inner {
            Inner::Cpu(b) => cpu_bufs!(
                self,
                "embedding",
                [table, out],
                b.embedding(table, ids, out, dim)
            ),
            Inner::Cuda(b) => Err(b.unsupported("embedding")),
        }
    }

    /// Index of the largest value of each of `rows` rows of `cols` (first on ties).
    pub fn argmax(&self, x: &DeviceBuf, rows: usize, cols: usize) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Cpu(b) => cpu_bufs!(self, "argmax", [x], b.argmax(x, rows, cols)),
            Inner::Cuda(b) => Err(b.unsupported("argmax")),
        }
    }
}

/// Checks `off..off+len` lies within `buf_len`; the error names op and buffer.
pub(crate) fn check_range(
    op: &'static str,
    device: &str,
    what: &'static str,
    off: usize,
    len: usize,
    buf_len: usize,
) -> Result<()> {
    match off.checked_add(len) {
        Some(end) if end <= buf_len => Ok(()),
        end => Err(KernelError::OutOfRange {
            op,
            device: device.to_string(),
            what,
            off,
            end: end.unwrap_or(usize::MAX),
            buf_len,
        }),
    }
}

/// `a * b` with overflow reported as a shape error.
pub(crate) fn mul_checked(op: &'static str, device: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| KernelError::Shape {
            op,
            device: device.to_string(),
            shape: format!("{dims:?}"),
            reason: "size overflows".into(),
        })
}
