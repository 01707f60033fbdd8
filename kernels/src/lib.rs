//! kvpr's compute backends behind one boundary.
//!
//! [`Backend`] is what the runtime holds. It checks every call (shapes,
//! ranges, which backend a buffer belongs to) once, then hands it to a
//! `device::Device` implementation: the CPU reference backend (f32,
//! candle-core's kernels, copy threads that can be paced to a link bandwidth)
//! or the CUDA backend (cudarc with dynamic loading, kernels compiled by NVRTC,
//! cuBLAS GEMMs; it always compiles and reports [`KernelError::NoDriver`]
//! where no driver is found). Each op is written once per backend, and every
//! op has a plain scalar twin in [`twin`] that tests and `kvpr selftest`
//! compare both backends against.
//!
//! The API is shaped for a device: buffers live on the device ([`DeviceBuf`]
//! in the compute dtype, [`IdBuf`] for token ids and positions, [`RopeFreqs`]
//! for a model's RoPE frequencies), host memory for the KV/activation store
//! is a [`HostBuf`] (pinned on CUDA), and three streams ([`Stream::Copy`],
//! [`Stream::Compute`], [`Stream::Writeback`]) are ordered only by
//! [`Event`]s. Token ids and positions are written to the
//! device once per step; argmax and sampling run on the device and only the
//! chosen ids come back ([`Backend::read_ids`]). Offsets and lengths are in
//! elements; every error is a typed [`KernelError`], never a panic.
//!
//! This crate must not know about models, plans or files: it moves and
//! computes numbers. Deciding what to move is `scheduler`'s job, doing it in
//! order is `runtime`'s.

mod check;
mod cpu;
mod cuda;
mod device;
mod error;
mod ops;
mod ragged;
pub mod selftest;
pub mod stored;
pub mod twin;

#[cfg(test)]
mod tests;

pub use cpu::{LINK_GBPS_MAX, LINK_GBPS_MIN};
pub use cuda::{
    compile_kernels, compile_kernels_in, default_kernel_cache, kernel_names, kernel_source,
    CompiledKernels, KERNEL_ARCHS,
};
pub use error::{KernelError, Result};

/// The id that [`Backend::gather_rows`] skips: its row of the output is left
/// as it was.
pub const SKIP_ROW: u32 = u32::MAX;

use std::str::FromStr;

use device::Device;

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
/// position `p = q_pos0 + j` and attends causally to keys `0 ..= p`, or, with
/// a sliding `window` `W > 0`, to the last `W` of them, `max(0, p + 1 - W) ..= p`
/// (Mistral's rule: key `t` is visible iff `p - W < t <= p`). A window of 0,
/// or one at least as long as the cache, is no window.
/// [`Backend::attention_ragged`] takes the same shape with `q_len = 1` and a
/// key count per row instead of `q_pos0`.
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
    /// Sliding window, in keys (the query's own included); 0: none.
    pub window: usize,
}

/// Shape of a [`Backend::rope`] call: `rows` rows `row_stride` elements
/// apart, each `n_heads` heads of `head_dim`. `interleaved`: GGUF/llama.cpp
/// pairs `(2i, 2i+1)`; else the Hugging Face `rotate_half` pairs
/// `(i, i + head_dim/2)`. The frequencies come from a [`RopeFreqs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeShape {
    pub rows: usize,
    pub row_stride: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub interleaved: bool,
}

/// A RoPE frequency table on a backend's device, made by
/// [`Backend::rope_freqs`]: `head_dim / 2` inverse frequencies (f32 whatever
/// the compute dtype) and an attention factor that scales cos and sin, as
/// Hugging Face's `rope_init_fn`s return them (default, linear, llama3,
/// YaRN, ...). Pair `i` of a row at position `p` turns by the angle
/// `p * inv_freq[i]` (in f64); the exact rule is [`twin::rope`]. Computed
/// once at load and shared by every layer's [`Backend::rope`].
pub struct RopeFreqs {
    len: usize,
    attention_factor: f32,
    dynamic: Option<DynamicNtk>,
    /// What the [`Backend`] that made it computes on.
    owner: Owner,
    inner: FreqsInner,
}

pub(crate) enum FreqsInner {
    Cpu(cpu::CpuFreqs),
    Cuda(cuda::CudaFreqs),
}

impl RopeFreqs {
    /// Number of inverse frequencies (`head_dim / 2` of the heads it turns).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The factor cos and sin are multiplied by (1 for plain RoPE).
    pub fn attention_factor(&self) -> f32 {
        self.attention_factor
    }

    /// The dynamic NTK scaling the table was made with, if any.
    pub fn dynamic(&self) -> Option<DynamicNtk> {
        self.dynamic
    }
}

/// Dynamic NTK scaling (Hugging Face's `rope_type: "dynamic"`), as
/// transformers applies it to one generation: the RoPE base grows with the
/// length `L` of the forward call that made a key, and a cached key keeps
/// the rotation it was made with. The prompt is one call (`L` = its length),
/// each later token its own (`L = p + 1`); so a row at position `p` has
/// `L = max(p + 1, min_len)` with `min_len` the prompt's length. While `L
/// <= max_pos` nothing changes; beyond, the base is `theta * x^(d/(d-2))`
/// with `x = factor * L / max_pos - (factor - 1)` and `d = head_dim`, i.e.
/// pair `i` of the table turns by `inv_freq[i] * x^(-2i/(d-2))`. The exact
/// rule is [`twin::rope_angle`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DynamicNtk {
    /// `rope_scaling.factor` (at least 1).
    pub factor: f32,
    /// `max_position_embeddings`: the length up to which the base is `theta`.
    pub max_pos: u32,
    /// The length of the first call (the prompt's); rows before it turn as
    /// if made by that call.
    pub min_len: u32,
}

/// A strided block of elements: `rows` runs of `width` elements, `src_pitch`
/// apart in the source and `dst_pitch` apart in the destination (the shape
/// of one 2-D copy, `cuMemcpy2D`'s, in elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub rows: usize,
    pub width: usize,
    pub src_pitch: usize,
    pub dst_pitch: usize,
}

impl Rows {
    /// One contiguous run of `len` elements.
    pub fn contiguous(len: usize) -> Rows {
        Rows {
            rows: 1,
            width: len,
            src_pitch: len,
            dst_pitch: len,
        }
    }

    /// Elements moved.
    pub fn elements(&self) -> usize {
        self.rows.saturating_mul(self.width)
    }
}

/// How [`Backend::sample`] draws: logits times `inv_temperature`, cut to the
/// `top_k` largest (0: all) and to the nucleus of mass `top_p` (1: all),
/// then one draw by the Gumbel-max trick with noise hashed from
/// `(seed, step, row, column)`; the exact rule is [`twin::sample_row`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleArgs {
    pub inv_temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
    pub step: u64,
}

/// A compute backend: checks each call, then runs it on its device.
pub struct Backend {
    spec: DeviceSpec,
    dev: Box<dyn Device>,
    /// Device bytes allocated so far (buffers and id buffers; cumulative).
    allocated: std::sync::atomic::AtomicU64,
    /// Kernels launched so far (cumulative).
    launches: std::sync::atomic::AtomicU64,
}

/// What a buffer or table was made for: a device and the dtype of its
/// elements. Every buffer carries its backend's, and every op checks it, so
/// a buffer of another device, or of the same device in another dtype
/// (whose elements may be another size), is an error, never a stray access.
/// (Like candle's `same_device`: the CPU backends, all f32 host memory,
/// share one.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    spec: DeviceSpec,
    dtype: Dtype,
}

/// Device memory: `len` elements of the backend's compute dtype.
pub struct DeviceBuf {
    len: usize,
    /// What the [`Backend`] that made it computes on.
    owner: Owner,
    inner: BufInner,
}

/// A buffer an op checks: its length and the backend that made it.
pub(crate) trait Owned {
    fn len(&self) -> usize;
    fn owner(&self) -> Owner;
}

macro_rules! owned {
    ($($t:ty),*) => {$(
        impl Owned for $t {
            fn len(&self) -> usize {
                self.len
            }
            fn owner(&self) -> Owner {
                self.owner
            }
        }
    )*};
}
owned!(DeviceBuf, IdBuf, HostBuf);

pub(crate) enum BufInner {
    Cpu(cpu::CpuBuf),
    Cuda(cuda::CudaBuf),
}

impl BufInner {
    /// Whether both handles name the same allocation.
    pub(crate) fn same(&self, other: &BufInner) -> bool {
        match (self, other) {
            (BufInner::Cpu(a), BufInner::Cpu(b)) => a.same(b),
            (BufInner::Cuda(a), BufInner::Cuda(b)) => a.same(b),
            _ => false,
        }
    }
}

/// Device memory for `u32` token ids and positions.
pub struct IdBuf {
    len: usize,
    owner: Owner,
    inner: IdInner,
}

pub(crate) enum IdInner {
    Cpu(cpu::CpuIds),
    Cuda(cuda::CudaIds),
}

/// Host memory for the KV/activation store: pinned on CUDA, plain on CPU.
pub struct HostBuf {
    len: usize,
    pinned: bool,
    owner: Owner,
    inner: HostInner,
}

pub(crate) enum HostInner {
    Cpu(cpu::CpuBuf),
    Cuda(cuda::CudaHostBuf),
}

/// A point on a stream; fires when the stream reaches it.
pub struct Event {
    inner: EventInner,
}

pub(crate) enum EventInner {
    Cpu(cpu::CpuEvent),
    Cuda(cuda::CudaEv),
}

impl DeviceBuf {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl IdBuf {
    /// Number of ids.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl HostBuf {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the buffer is page-locked (always false on the CPU backend).
    pub fn is_pinned(&self) -> bool {
        self.pinned
    }
}

impl Backend {
    /// Builds a backend. CUDA: probes for the driver first and returns
    /// [`KernelError::NoDriver`] when there is none.
    pub fn new(spec: DeviceSpec, opts: BackendOptions) -> Result<Backend> {
        let dev: Box<dyn Device> = match spec {
            DeviceSpec::Cpu => Box::new(cpu::CpuBackend::new(opts)?),
            DeviceSpec::Cuda(ordinal) => Box::new(cuda::CudaBackend::new(ordinal, opts)?),
        };
        Ok(Backend {
            spec,
            dev,
            allocated: Default::default(),
            launches: Default::default(),
        })
    }

    /// The device this backend was built for.
    pub fn spec(&self) -> DeviceSpec {
        self.spec
    }

    /// Human-readable device name, e.g. `cpu (f32, link paced to 2 GB/s)`.
    pub fn name(&self) -> String {
        self.dev.name()
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self.spec, DeviceSpec::Cuda(_))
    }

    /// The compute dtype of device buffers.
    pub fn dtype(&self) -> Dtype {
        self.dev.dtype()
    }

    /// Device memory free now, in bytes (`cuMemGetInfo`), or `None` where
    /// the device is host memory (the CPU backend: check the host's instead).
    pub fn free_memory(&self) -> Result<Option<u64>> {
        self.dev.free_memory()
    }

    /// The link pacing of the CPU backend, GB/s (None: unpaced, or CUDA).
    pub fn link_gbps(&self) -> Option<f64> {
        self.dev.link_gbps()
    }

    /// A zeroed device buffer of `len` elements.
    pub fn alloc(&self, len: usize) -> Result<DeviceBuf> {
        let inner = self.dev.alloc(len)?;
        self.count(len, self.dtype().bytes());
        Ok(DeviceBuf {
            len,
            owner: self.owner(),
            inner,
        })
    }

    /// A device buffer holding `data` (converted to the compute dtype); synchronous.
    pub fn upload(&self, data: &[f32]) -> Result<DeviceBuf> {
        let inner = self.dev.upload(data)?;
        self.count(data.len(), self.dtype().bytes());
        Ok(DeviceBuf {
            len: data.len(),
            owner: self.owner(),
            inner,
        })
    }

    /// [`Backend::upload`] of a vector the caller gives up: the CPU backend
    /// keeps it without a copy (loading a model holds one copy of a tensor,
    /// not two).
    pub fn upload_vec(&self, data: Vec<f32>) -> Result<DeviceBuf> {
        let len = data.len();
        let inner = self.dev.upload_owned(data)?;
        self.count(len, self.dtype().bytes());
        Ok(DeviceBuf {
            len,
            owner: self.owner(),
            inner,
        })
    }

    /// A buffer of the values `bytes` holds as `dtype` (little-endian, as a
    /// checkpoint stores them), converted to what this backend keeps in one
    /// pass: f32 on the CPU; on CUDA the bytes are copied as they are when
    /// they are already the compute dtype (no host copy), else converted a
    /// bounded chunk at a time. `bytes` must hold whole values.
    pub fn upload_stored(&self, bytes: &[u8], dtype: Dtype) -> Result<DeviceBuf> {
        if !bytes.len().is_multiple_of(dtype.bytes()) {
            return Err(KernelError::Shape {
                op: "upload_stored",
                device: self.name(),
                shape: format!("{} bytes of {dtype:?}", bytes.len()),
                reason: format!("not a whole number of {}-byte values", dtype.bytes()),
            });
        }
        let inner = self.dev.upload_stored(bytes, dtype)?;
        self.count(bytes.len() / dtype.bytes(), self.dtype().bytes());
        Ok(DeviceBuf {
            len: bytes.len() / dtype.bytes(),
            owner: self.owner(),
            inner,
        })
    }

    /// Elements `off..off+len` of `buf` as f32, after every stream has finished.
    pub fn download(&self, buf: &DeviceBuf, off: usize, len: usize) -> Result<Vec<f32>> {
        self.range("download", "buffer", off, len, buf)?;
        self.dev.download(&buf.inner, off, len)
    }

    /// A zeroed id buffer of `len` ids.
    pub fn alloc_ids(&self, len: usize) -> Result<IdBuf> {
        let inner = self.dev.alloc_ids(len)?;
        self.count(len, 4);
        Ok(IdBuf {
            len,
            owner: self.owner(),
            inner,
        })
    }

    /// Writes `ids` at `off`, in order on the compute stream (the host's
    /// slice may be reused as soon as this returns).
    pub fn write_ids(&self, dst: &IdBuf, off: usize, ids: &[u32]) -> Result<()> {
        self.range("write_ids", "id buffer", off, ids.len(), dst)?;
        if ids.is_empty() {
            return Ok(());
        }
        self.dev.write_ids(&dst.inner, off, ids)
    }

    /// Ids `off..off+len`, once the compute stream has produced them: the
    /// one point where the host waits for the device in a decode step.
    pub fn read_ids(&self, src: &IdBuf, off: usize, len: usize) -> Result<Vec<u32>> {
        self.range("read_ids", "id buffer", off, len, src)?;
        self.dev.read_ids(&src.inner, off, len)
    }

    /// A zeroed host buffer of `len` elements (pinned on CUDA).
    pub fn alloc_host(&self, len: usize) -> Result<HostBuf> {
        let (inner, pinned) = self.dev.alloc_host(len, true)?;
        Ok(HostBuf {
            len,
            pinned,
            owner: self.owner(),
            inner,
        })
    }

    /// A zeroed pageable (not page-locked) host buffer, for measuring the
    /// pageable link. On the CPU backend this is the same as [`Backend::alloc_host`].
    pub fn alloc_host_pageable(&self, len: usize) -> Result<HostBuf> {
        let (inner, pinned) = self.dev.alloc_host(len, false)?;
        Ok(HostBuf {
            len,
            pinned,
            owner: self.owner(),
            inner,
        })
    }

    /// Writes `data` at `off`; waits for in-flight copies that touch those elements.
    pub fn host_write(&self, dst: &HostBuf, off: usize, data: &[f32]) -> Result<()> {
        self.range("host_write", "host buffer", off, data.len(), dst)?;
        self.dev.host_write(&dst.inner, off, data)
    }

    /// Reads elements `off..off+len`; waits for in-flight copies that touch them.
    pub fn host_read(&self, src: &HostBuf, off: usize, len: usize) -> Result<Vec<f32>> {
        self.range("host_read", "host buffer", off, len, src)?;
        self.dev.host_read(&src.inner, off, len)
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
        self.copy_h2d_rows(stream, src, src_off, dst, dst_off, Rows::contiguous(len))
    }

    /// Copies a strided block host-to-device on `stream` as one copy; asynchronous.
    pub fn copy_h2d_rows(
        &self,
        stream: Stream,
        src: &HostBuf,
        src_off: usize,
        dst: &DeviceBuf,
        dst_off: usize,
        rows: Rows,
    ) -> Result<()> {
        self.rows("copy_h2d", "source", src_off, rows, rows.src_pitch, src)?;
        self.rows(
            "copy_h2d",
            "destination",
            dst_off,
            rows,
            rows.dst_pitch,
            dst,
        )?;
        if rows.elements() == 0 {
            return Ok(());
        }
        self.dev
            .copy_h2d(stream, &src.inner, src_off, &dst.inner, dst_off, rows)
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
        self.copy_d2h_rows(stream, src, src_off, dst, dst_off, Rows::contiguous(len))
    }

    /// Copies a strided block device-to-host on `stream` as one copy; asynchronous.
    pub fn copy_d2h_rows(
        &self,
        stream: Stream,
        src: &DeviceBuf,
        src_off: usize,
        dst: &HostBuf,
        dst_off: usize,
        rows: Rows,
    ) -> Result<()> {
        self.rows("copy_d2h", "source", src_off, rows, rows.src_pitch, src)?;
        self.rows(
            "copy_d2h",
            "destination",
            dst_off,
            rows,
            rows.dst_pitch,
            dst,
        )?;
        if rows.elements() == 0 {
            return Ok(());
        }
        self.dev
            .copy_d2h(stream, &src.inner, src_off, &dst.inner, dst_off, rows)
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
        self.range("copy_d2d", "source", src_off, len, src)?;
        self.range("copy_d2d", "destination", dst_off, len, dst)?;
        if len == 0 {
            return Ok(());
        }
        self.dev
            .copy_d2d(stream, &src.inner, src_off, &dst.inner, dst_off, len)
    }

    /// An event that fires when `stream` reaches this point. Reports an earlier
    /// failure of that stream.
    pub fn record(&self, stream: Stream) -> Result<Event> {
        Ok(Event {
            inner: self.dev.record(stream)?,
        })
    }

    /// Makes `stream` wait for `ev`. (The CPU backend's compute stream is the
    /// calling thread, so there this blocks the caller; on CUDA it never does.)
    pub fn wait(&self, stream: Stream, ev: &Event) -> Result<()> {
        self.dev.wait(stream, &ev.inner)
    }

    /// Waits until every stream has finished its work; reports stream failures.
    pub fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }

    /// Microseconds from `start` to `end`; waits for both to fire.
    pub fn elapsed_us(&self, start: &Event, end: &Event) -> Result<f64> {
        self.dev.elapsed_us(&start.inner, &end.inner)
    }

    /// Test hook: makes `stream`'s worker panic (CPU backend; no-op elsewhere).
    #[cfg(test)]
    pub(crate) fn inject_panic(&self, stream: Stream, message: &'static str) -> Result<()> {
        self.dev.inject_panic(stream, message)
    }

    /// Checks that `buf` is this backend's and holds `off..off + len`.
    fn range(
        &self,
        op: &'static str,
        what: &'static str,
        off: usize,
        len: usize,
        buf: &impl Owned,
    ) -> Result<()> {
        self.owns(op, what, buf.owner())?;
        check::range(op, &self.dev.short_name(), what, off, len, buf.len())
    }

    fn count(&self, len: usize, esz: usize) {
        let bytes = (len as u64).saturating_mul(esz as u64);
        self.allocated
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Device bytes allocated through this backend so far: every buffer and
    /// id buffer, cumulative (a freed buffer is not subtracted), so the
    /// difference across a call is what the call allocated.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Kernels launched through this backend so far, cumulative: one per
    /// compute op that does work (an empty op launches nothing). What the
    /// cost model prices per launch is held to this count.
    pub fn launches(&self) -> u64 {
        self.launches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The device, for an op about to launch its kernel: counted.
    pub(crate) fn kernel(&self) -> &dyn Device {
        self.launches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &*self.dev
    }

    /// The device and dtype this backend's buffers are made for.
    pub(crate) fn owner(&self) -> Owner {
        Owner {
            spec: self.spec,
            dtype: self.dtype(),
        }
    }

    /// A buffer or table made for another device or dtype is an error
    /// naming it.
    fn owns(&self, op: &'static str, what: &'static str, owner: Owner) -> Result<()> {
        if owner != self.owner() {
            return Err(KernelError::WrongBackend {
                op,
                device: self.dev.short_name(),
                what,
            });
        }
        Ok(())
    }

    fn rows(
        &self,
        op: &'static str,
        what: &'static str,
        off: usize,
        r: Rows,
        pitch: usize,
        buf: &impl Owned,
    ) -> Result<()> {
        self.owns(op, what, buf.owner())?;
        check::rows(op, &self.dev.short_name(), what, off, r, pitch, buf.len())
    }

    fn shape(&self, op: &'static str, shape: String, reason: &str) -> KernelError {
        KernelError::Shape {
            op,
            device: self.dev.short_name(),
            shape,
            reason: reason.into(),
        }
    }
}
