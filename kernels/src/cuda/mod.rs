//! The CUDA backend: cudarc's safe driver API with dynamic loading, cuBLAS for
//! GEMM, in f32, f16 or bf16 (chosen at `new`, default f16).
//!
//! **Loading.** cudarc panics when it cannot load a library, so `new` probes
//! `libcuda` (and `libcublas`) with `is_culib_present()` before touching
//! either, and maps every later failure to a [`KernelError`].
//!
//! **Event tracking: disabled, ordered by our own events.** By default cudarc
//! records a read and a write event on every `CudaSlice` use once a context has
//! several streams, which would add hidden cross-stream waits to every copy
//! and op and duplicate the ordering the runtime already expresses with
//! [`crate::Backend::record`] / [`crate::Backend::wait`]. So `new` calls
//! `disable_event_tracking()` before allocating anything: buffers are raw
//! device pointers and the caller orders the copy, compute and writeback
//! streams with events, exactly as on the CPU backend. Two safety nets stay:
//! a [`CudaBuf`] is freed (stream-ordered, on the compute stream) only after
//! the compute stream has waited for the copy and writeback streams; and host
//! buffers remember the events of the copies that touch them, so `host_write`
//! / `host_read` wait for in-flight copies of the same elements, and a host
//! buffer's drop waits for every copy still in flight on it (pinned memory is
//! never freed under a running transfer, even after a failed step). CPU
//! access and the enqueueing of copies on one host buffer take the same lock,
//! which is what makes sharing it between threads sound.
//!
//! **Pinned memory.** Host buffers are page-locked with flags 0, not cudarc's
//! default write-combined `alloc_pinned`: write-combined memory is uncached
//! and very slow for the CPU to read, and the store is read back by the CPU
//! (`host_read`) as well as by DMA. `alloc_host_pageable` gives plain memory
//! to measure the pageable path.
//!
//! **Kernels.** Every op but GEMM (cuBLAS) is a CUDA C kernel from
//! `kernels/cuda/`, compiled by NVRTC for the device's `sm_XY` when the
//! backend is built (see `nvrtc.rs`), in the backend's dtype, with f32
//! accumulation. Launches are in `ops.rs`.

mod gemm;
mod nvrtc;
mod ops;

pub use nvrtc::{
    compile_kernels, compile_kernels_in, default_kernel_cache, kernel_names, kernel_source,
    CompiledKernels, KERNEL_ARCHS,
};

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::sys::{self, CUdeviceptr, CUevent_flags, CUmemorytype};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PinnedHostSlice, PushKernelArg,
};

use crate::device::Device;
use crate::{
    AttnShape, BackendOptions, BufInner, Dtype, DynamicNtk, EventInner, FreqsInner, HostInner,
    IdInner, KernelError, Result, RopeFreqs, RopeShape, Rows, SampleArgs, Stream,
};

/// A device buffer: a raw allocation of `len` elements of `esz` bytes.
pub(crate) struct CudaBuf {
    ptr: CUdeviceptr,
    len: usize,
    esz: usize,
    /// Streams to order before the free (see the module doc).
    copy: Arc<CudaStream>,
    compute: Arc<CudaStream>,
    writeback: Arc<CudaStream>,
    slice: Option<CudaSlice<u8>>,
}

impl CudaBuf {
    fn at(&self, off: usize) -> CUdeviceptr {
        self.ptr + (off * self.esz) as CUdeviceptr
    }
    /// Whether both name the same allocation.
    pub(crate) fn same(&self, other: &CudaBuf) -> bool {
        self.ptr == other.ptr
    }
}

impl Drop for CudaBuf {
    fn drop(&mut self) {
        for s in [&self.copy, &self.writeback] {
            if let Ok(e) = s.record_event(None) {
                let _ = self.compute.wait(&e);
            }
        }
        // The slice frees itself with `cuMemFreeAsync` on the compute stream.
        drop(self.slice.take());
    }
}

/// Token ids and positions: a device buffer of `u32`.
pub(crate) struct CudaIds(CudaBuf);

/// A RoPE frequency table: a device buffer of `f32` inverse frequencies,
/// whatever the compute dtype (the attention factor is a launch argument).
pub(crate) struct CudaFreqs(CudaBuf);

/// Owns the host allocation `CudaHostBuf::ptr` points into (freed on drop).
#[allow(dead_code)]
enum HostMem {
    Pinned(PinnedHostSlice<u8>),
    Pageable(Box<[u8]>),
}

/// A host buffer: pinned (or pageable), with the copies in flight on it.
pub(crate) struct CudaHostBuf {
    ptr: *mut u8,
    esz: usize,
    dtype: Dtype,
    /// The copies in flight and their ranges. Held while the CPU reads or
    /// writes the buffer and while a copy is enqueued and recorded.
    pending: Mutex<Vec<(Range<usize>, Arc<CudaEvent>)>>,
    /// Owns the memory (`ptr` points into it); freed after `Drop` has waited.
    #[allow(dead_code)]
    mem: HostMem,
}

// SAFETY: `ptr` points into `mem`, which this struct owns and never moves.
// Every CPU access (`host_write`, `host_read`) and every enqueue of a copy
// (`copy_h2d`, `copy_d2h`) holds the `pending` lock, and CPU accesses first
// wait for the recorded copies that overlap them; so no two threads touch the
// memory at once and the CPU never races a DMA it knows of. Drop waits for
// every copy still in flight.
unsafe impl Send for CudaHostBuf {}
unsafe impl Sync for CudaHostBuf {}

impl CudaHostBuf {
    fn lock(&self) -> MutexGuard<'_, Vec<(Range<usize>, Arc<CudaEvent>)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for every in-flight copy touching `r`, and forgets finished ones.
    fn settle(
        p: &mut Vec<(Range<usize>, Arc<CudaEvent>)>,
        r: &Range<usize>,
        dev: &str,
    ) -> Result<()> {
        for (rr, ev) in p.iter() {
            if rr.start < r.end && r.start < rr.end {
                ev.synchronize()
                    .map_err(|e| cuda_err(dev, "cuEventSynchronize", e))?;
            }
        }
        p.retain(|(rr, ev)| !(ev.is_complete() || rr.start < r.end && r.start < rr.end));
        Ok(())
    }

    fn track(p: &mut Vec<(Range<usize>, Arc<CudaEvent>)>, r: Range<usize>, ev: CudaEvent) {
        if p.len() >= 64 {
            p.retain(|(_, e)| !e.is_complete());
        }
        p.push((r, Arc::new(ev)));
    }
}

impl Drop for CudaHostBuf {
    fn drop(&mut self) {
        // Pinned memory must not be freed under a running transfer.
        for (_, ev) in self.lock().iter() {
            let _ = ev.synchronize();
        }
    }
}

/// A recorded CUDA event (timing enabled).
#[derive(Clone)]
pub(crate) struct CudaEv(Arc<CudaEvent>);

/// Scratch the kernels need, grown to the largest shape seen (sized by
/// capacities, not by the current context, so a decode loop allocates
/// nothing after its first step).
#[derive(Default)]
struct Scratch {
    /// Flash-decoding partials: `part_o` then `part_ml`, f32.
    attn: Option<CudaBuf>,
    /// The sampler's probabilities, f32.
    sample: Option<CudaBuf>,
}

pub(crate) struct CudaBackend {
    device: String,
    short: String,
    dtype: Dtype,
    ctx: Arc<CudaContext>,
    copy: Arc<CudaStream>,
    compute: Arc<CudaStream>,
    writeback: Arc<CudaStream>,
    blas: cudarc::cublas::CudaBlas,
    /// This dtype's kernels by name (without the dtype suffix).
    funcs: HashMap<&'static str, CudaFunction>,
    scratch: Mutex<Scratch>,
    /// `write_ids`' page-locked staging and the event of its last copy.
    ids_stage: Mutex<IdsStage>,
}

/// Page-locked memory ids are copied from, so their host-to-device copy is
/// truly asynchronous and the caller's slice can be reused at once. A slot
/// is written again only once its last copy has finished; a write finds a
/// finished slot or adds one, so the host never waits for the device here
/// (up to [`IDS_STAGE_SLOTS`] copies in flight, then it waits for the oldest).
#[derive(Default)]
struct IdsStage {
    slots: Vec<(PinnedHostSlice<u8>, Option<CudaEvent>)>,
    /// The slot written last (the next search starts after it).
    last: usize,
}

/// The most `write_ids` copies in flight at once.
const IDS_STAGE_SLOTS: usize = 64;

fn cuda_err(device: &str, call: &'static str, e: impl std::fmt::Display) -> KernelError {
    KernelError::Cuda {
        device: device.to_string(),
        call,
        message: e.to_string(),
    }
}

fn wrong(dev: &str, op: &'static str, what: &'static str) -> KernelError {
    KernelError::WrongBackend {
        op,
        device: dev.to_string(),
        what,
    }
}

impl CudaBackend {
    pub(crate) fn new(ordinal: usize, opts: BackendOptions) -> Result<Self> {
        let device = format!("cuda:{ordinal}");
        // SAFETY: the probe only tries to dlopen the library.
        if !unsafe { sys::is_culib_present() } {
            return Err(KernelError::NoDriver);
        }
        // SAFETY: as above.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(KernelError::MissingLibrary {
                device,
                library: "cuBLAS (libcublas.so.13)",
            });
        }
        if opts.link_gbps.is_some() {
            return Err(KernelError::Unsupported {
                op: "link pacing (--link-gbps)",
                device,
            });
        }
        let n =
            CudaContext::device_count().map_err(|e| cuda_err(&device, "cuDeviceGetCount", e))?;
        if ordinal >= n.max(0) as usize {
            return Err(KernelError::Cuda {
                device,
                call: "cuDeviceGet",
                message: format!("this machine has {n} CUDA device(s)"),
            });
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| cuda_err(&device, "cuInit/cuDevicePrimaryCtxRetain", e))?;
        // SAFETY: called before any buffer exists in this context; from here on
        // the streams are ordered by our own events (see the module doc).
        unsafe { ctx.disable_event_tracking() };
        let stream = |what| ctx.new_stream().map_err(|e| cuda_err(&device, what, e));
        let copy = stream("cuStreamCreate (copy)")?;
        let compute = stream("cuStreamCreate (compute)")?;
        let writeback = stream("cuStreamCreate (writeback)")?;
        let blas = cudarc::cublas::CudaBlas::new(compute.clone())
            .map_err(|e| cuda_err(&device, "cublasCreate", e))?;
        let gpu = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let dtype = opts.dtype.unwrap_or(Dtype::F16);
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| cuda_err(&device, "cuDeviceGetAttribute", e))?;
        let compiled = nvrtc::compile_kernels(&format!("sm_{major}{minor}"))?;
        let module =
            nvrtc::load(&ctx, &compiled).map_err(|e| cuda_err(&device, "cuModuleLoadData", e))?;
        // Entry points are named after the dtype: `rmsnorm_f16`.
        let suffix = dtype.name();
        let mut funcs = HashMap::new();
        for k in nvrtc::KERNELS {
            let f = module
                .load_function(&format!("{k}_{suffix}"))
                .map_err(|e| cuda_err(&device, "cuModuleGetFunction", e))?;
            funcs.insert(k, f);
        }
        Ok(CudaBackend {
            device: format!("{device} ({gpu}, {})", dtype.name()),
            short: device,
            dtype,
            ctx,
            copy,
            compute,
            writeback,
            blas,
            funcs,
            scratch: Mutex::new(Scratch::default()),
            ids_stage: Mutex::new(IdsStage::default()),
        })
    }

    fn err(&self, call: &'static str, e: impl std::fmt::Display) -> KernelError {
        cuda_err(&self.short, call, e)
    }

    fn stream(&self, s: Stream) -> &Arc<CudaStream> {
        match s {
            Stream::Copy => &self.copy,
            Stream::Compute => &self.compute,
            Stream::Writeback => &self.writeback,
        }
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| self.err("cuCtxSetCurrent", e))
    }

    fn buf<'a>(&self, op: &'static str, b: &'a BufInner) -> Result<&'a CudaBuf> {
        match b {
            BufInner::Cuda(x) => Ok(x),
            BufInner::Cpu(_) => Err(wrong(&self.short, op, "device buffer")),
        }
    }

    fn host<'a>(&self, op: &'static str, b: &'a HostInner) -> Result<&'a CudaHostBuf> {
        match b {
            HostInner::Cuda(x) => Ok(x),
            HostInner::Cpu(_) => Err(wrong(&self.short, op, "host buffer")),
        }
    }

    fn ids<'a>(&self, op: &'static str, b: &'a IdInner) -> Result<&'a CudaBuf> {
        match b {
            IdInner::Cuda(x) => Ok(&x.0),
            IdInner::Cpu(_) => Err(wrong(&self.short, op, "id buffer")),
        }
    }

    fn event<'a>(&self, op: &'static str, e: &'a EventInner) -> Result<&'a CudaEv> {
        match e {
            EventInner::Cuda(x) => Ok(x),
            EventInner::Cpu(_) => Err(wrong(&self.short, op, "event")),
        }
    }

    /// A zeroed raw allocation of `len` elements of `esz` bytes.
    fn raw_alloc(&self, len: usize, esz: usize) -> Result<CudaBuf> {
        let bytes = len.checked_mul(esz).ok_or_else(|| KernelError::Shape {
            op: "alloc",
            device: self.short.clone(),
            shape: format!("[{len}]"),
            reason: "size overflows".into(),
        })?;
        let slice = self
            .compute
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(|e| self.err("cuMemAllocAsync", e))?;
        // With event tracking off, the returned guard records nothing.
        let ptr = slice.device_ptr(&self.compute).0;
        // Make the allocation and its zeroing visible to every stream.
        self.compute
            .synchronize()
            .map_err(|e| self.err("cuStreamSynchronize", e))?;
        Ok(CudaBuf {
            ptr,
            len,
            esz,
            copy: self.copy.clone(),
            compute: self.compute.clone(),
            writeback: self.writeback.clone(),
            slice: Some(slice),
        })
    }

    /// One strided copy between host and device (`to_device`) on `stream`.
    #[allow(clippy::too_many_arguments)]
    fn copy_host(
        &self,
        stream: Stream,
        host: &CudaHostBuf,
        host_off: usize,
        dev: &CudaBuf,
        dev_off: usize,
        rows: Rows,
        to_device: bool,
    ) -> Result<()> {
        let esz = dev.esz;
        let (host_pitch, dev_pitch) = match to_device {
            true => (rows.src_pitch, rows.dst_pitch),
            false => (rows.dst_pitch, rows.src_pitch),
        };
        let span = (rows.rows - 1) * host_pitch + rows.width;
        self.bind()?;
        let s = self.stream(stream);
        let mut pending = host.lock();
        // SAFETY: `Backend` checked both ranges against the buffers, which
        // share this backend's dtype; the host memory lives as long as `host`,
        // whose drop and CPU accessors wait for the event recorded below.
        unsafe {
            let h = host.ptr.add(host_off * esz);
            let d = dev.at(dev_off);
            if rows.rows == 1 {
                let n = rows.width * esz;
                match to_device {
                    true => sys::cuMemcpyHtoDAsync_v2(d, h as *const _, n, s.cu_stream()),
                    false => sys::cuMemcpyDtoHAsync_v2(h as *mut _, d, n, s.cu_stream()),
                }
                .result()
            } else {
                let p = memcpy_2d(
                    to_device,
                    h,
                    d,
                    host_pitch * esz,
                    dev_pitch * esz,
                    rows,
                    esz,
                );
                sys::cuMemcpy2DAsync_v2(&p, s.cu_stream()).result()
            }
        }
        .map_err(|e| self.err("cuMemcpyAsync (host)", e))?;
        CudaHostBuf::track(&mut pending, host_off..host_off + span, self.record_raw(s)?);
        Ok(())
    }

    /// A page-locked staging slot for `write_ids` of at least `bytes`.
    fn ids_slot(&self, bytes: usize) -> Result<PinnedHostSlice<u8>> {
        // SAFETY: flags 0 = plain page-locked memory; every byte a copy reads
        // is written by `write_ids` first.
        unsafe { self.ctx.alloc_pinned_with_flags::<u8>(bytes.max(4096), 0) }
            .map_err(|e| self.err("cuMemHostAlloc (ids staging)", e))
    }

    fn record_raw(&self, s: &CudaStream) -> Result<CudaEvent> {
        s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| self.err("cuEventRecord", e))
    }
}

/// The parameters of one strided copy between page-locked host memory at `h`
/// and device memory at `d` (pitches in bytes). Every field is spelled out:
/// the struct holds enums with no zero value, so `mem::zeroed` is undefined.
fn memcpy_2d(
    to_device: bool,
    h: *mut u8,
    d: CUdeviceptr,
    host_pitch: usize,
    dev_pitch: usize,
    rows: Rows,
    esz: usize,
) -> sys::CUDA_MEMCPY2D {
    let (host, dev) = (
        CUmemorytype::CU_MEMORYTYPE_HOST,
        CUmemorytype::CU_MEMORYTYPE_DEVICE,
    );
    let (src_type, dst_type, src_pitch, dst_pitch) = match to_device {
        true => (host, dev, host_pitch, dev_pitch),
        false => (dev, host, dev_pitch, host_pitch),
    };
    sys::CUDA_MEMCPY2D {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: src_type,
        srcHost: if to_device {
            h as *const _
        } else {
            std::ptr::null()
        },
        srcDevice: if to_device { 0 } else { d },
        srcArray: std::ptr::null_mut(),
        srcPitch: src_pitch,
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: dst_type,
        dstHost: if to_device {
            std::ptr::null_mut()
        } else {
            h as *mut _
        },
        dstDevice: if to_device { d } else { 0 },
        dstArray: std::ptr::null_mut(),
        dstPitch: dst_pitch,
        WidthInBytes: rows.width * esz,
        Height: rows.rows,
    }
}

impl Device for CudaBackend {
    fn name(&self) -> String {
        self.device.clone()
    }

    fn free_memory(&self) -> Result<Option<u64>> {
        let (free, _total) = self
            .ctx
            .mem_get_info()
            .map_err(|e| self.err("cuMemGetInfo", e))?;
        Ok(Some(free as u64))
    }

    fn short_name(&self) -> String {
        self.short.clone()
    }

    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn alloc(&self, len: usize) -> Result<BufInner> {
        Ok(BufInner::Cuda(self.raw_alloc(len, self.dtype.bytes())?))
    }

    fn upload(&self, data: &[f32]) -> Result<BufInner> {
        let buf = self.raw_alloc(data.len(), self.dtype.bytes())?;
        let bytes = encode(self.dtype, data);
        self.bind()?;
        // SAFETY: `buf` holds `bytes.len()` bytes; the copy is synchronous.
        unsafe { cudarc::driver::result::memcpy_htod_sync(buf.ptr, &bytes) }
            .map_err(|e| self.err("cuMemcpyHtoD", e))?;
        Ok(BufInner::Cuda(buf))
    }

    fn upload_stored(&self, bytes: &[u8], src: Dtype) -> Result<BufInner> {
        let n = bytes.len() / src.bytes();
        let buf = self.raw_alloc(n, self.dtype.bytes())?;
        self.bind()?;
        crate::stored::staged(
            self.dtype,
            src,
            bytes,
            crate::stored::STAGE_CHUNK,
            |off, piece| {
                // SAFETY: `staged` hands out pieces that tile the `n` values of
                // the destination dtype `buf` holds; the copy is synchronous.
                unsafe { cudarc::driver::result::memcpy_htod_sync(buf.ptr + off as u64, piece) }
                    .map_err(|e| self.err("cuMemcpyHtoD (stored weights)", e))
            },
        )?;
        Ok(BufInner::Cuda(buf))
    }

    fn download(&self, b: &BufInner, off: usize, len: usize) -> Result<Vec<f32>> {
        let buf = self.buf("download", b)?;
        self.synchronize()?;
        let mut bytes = vec![0u8; len * buf.esz];
        // SAFETY: `Backend` checked the range; all streams are idle.
        unsafe { cudarc::driver::result::memcpy_dtoh_sync(&mut bytes, buf.at(off)) }
            .map_err(|e| self.err("cuMemcpyDtoH", e))?;
        Ok(decode(self.dtype, &bytes))
    }

    fn alloc_ids(&self, len: usize) -> Result<IdInner> {
        Ok(IdInner::Cuda(CudaIds(self.raw_alloc(len, 4)?)))
    }

    fn write_ids(&self, dst: &IdInner, off: usize, ids: &[u32]) -> Result<()> {
        let d = self.ids("write_ids", dst)?;
        self.bind()?;
        let bytes = std::mem::size_of_val(ids);
        let mut stage = self.ids_stage.lock().unwrap_or_else(|e| e.into_inner());
        let n = stage.slots.len();
        // A slot whose last copy has finished (or never ran), oldest first.
        let free = (1..=n).map(|k| (stage.last + k) % n).find(|&i| {
            stage.slots[i]
                .1
                .as_ref()
                .is_none_or(|ev| ev.try_is_complete().unwrap_or(false))
        });
        let i = match free {
            Some(i) if stage.slots[i].0.len() >= bytes => i,
            Some(i) => {
                stage.slots[i] = (self.ids_slot(bytes)?, None);
                i
            }
            None if n < IDS_STAGE_SLOTS => {
                stage.slots.push((self.ids_slot(bytes)?, None));
                n
            }
            None => {
                // Every slot is in flight: wait for the oldest.
                let i = (stage.last + 1) % n;
                if let Some(ev) = stage.slots[i].1.take() {
                    ev.synchronize()
                        .map_err(|e| self.err("cuEventSynchronize (ids staging)", e))?;
                }
                if stage.slots[i].0.len() < bytes {
                    stage.slots[i].0 = self.ids_slot(bytes)?;
                }
                i
            }
        };
        stage.last = i;
        let buf = &mut stage.slots[i].0;
        let p = buf
            .as_mut_ptr()
            .map_err(|e| self.err("cuEventSynchronize (ids staging)", e))?;
        // SAFETY: the slot holds at least `bytes` bytes and no copy reads it
        // any more (its event completed, or was waited for, above); `ids` is
        // `bytes` long.
        unsafe { std::ptr::copy_nonoverlapping(ids.as_ptr() as *const u8, p, bytes) };
        // SAFETY: `Backend` checked the range. The source is page-locked, so
        // the copy is asynchronous, ordered on the compute stream with the ops
        // that read the ids; the staging is not written again before the event
        // recorded after it completes, and `ids` itself is not read by it.
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(d.at(off), p as *const _, bytes, self.compute.cu_stream())
                .result()
        }
        .map_err(|e| self.err("cuMemcpyHtoDAsync (ids)", e))?;
        stage.slots[i].1 = Some(self.record_raw(&self.compute)?);
        Ok(())
    }

    fn read_ids(&self, src: &IdInner, off: usize, len: usize) -> Result<Vec<u32>> {
        let s = self.ids("read_ids", src)?;
        self.compute
            .synchronize()
            .map_err(|e| self.err("cuStreamSynchronize", e))?;
        let mut bytes = vec![0u8; len * 4];
        self.bind()?;
        // SAFETY: `Backend` checked the range; the compute stream is idle.
        unsafe { cudarc::driver::result::memcpy_dtoh_sync(&mut bytes, s.at(off)) }
            .map_err(|e| self.err("cuMemcpyDtoH (ids)", e))?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn alloc_host(&self, len: usize, pinned: bool) -> Result<(HostInner, bool)> {
        let esz = self.dtype.bytes();
        let bytes = len.checked_mul(esz).ok_or_else(|| KernelError::Shape {
            op: "alloc_host",
            device: self.short.clone(),
            shape: format!("[{len}]"),
            reason: "size overflows".into(),
        })?;
        let (ptr, mem) = if pinned {
            // SAFETY: flags 0 = plain page-locked memory; zeroed just below
            // before anything reads it.
            let mut p = unsafe { self.ctx.alloc_pinned_with_flags::<u8>(bytes.max(1), 0) }
                .map_err(|e| self.err("cuMemHostAlloc", e))?;
            let ptr = p
                .as_mut_ptr()
                .map_err(|e| self.err("cuEventSynchronize", e))?;
            // SAFETY: `ptr` is valid for `bytes.max(1)` bytes.
            unsafe { zero_host(ptr, bytes.max(1)) };
            (ptr, HostMem::Pinned(p))
        } else {
            let mut b = vec![0u8; bytes.max(1)].into_boxed_slice();
            (b.as_mut_ptr(), HostMem::Pageable(b))
        };
        let buf = CudaHostBuf {
            ptr,
            esz,
            dtype: self.dtype,
            pending: Mutex::new(Vec::new()),
            mem,
        };
        Ok((HostInner::Cuda(buf), pinned))
    }

    fn host_write(&self, dst: &HostInner, off: usize, data: &[f32]) -> Result<()> {
        let dst = self.host("host_write", dst)?;
        let mut p = dst.lock();
        CudaHostBuf::settle(&mut p, &(off..off + data.len()), &self.short)?;
        let bytes = encode(dst.dtype, data);
        // SAFETY: range checked by `Backend`; no copy in flight touches these
        // elements and none can be enqueued while we hold the lock.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.ptr.add(off * dst.esz), bytes.len())
        };
        Ok(())
    }

    fn host_read(&self, src: &HostInner, off: usize, len: usize) -> Result<Vec<f32>> {
        let src = self.host("host_read", src)?;
        let mut p = src.lock();
        CudaHostBuf::settle(&mut p, &(off..off + len), &self.short)?;
        // SAFETY: as in `host_write`.
        let bytes =
            unsafe { std::slice::from_raw_parts(src.ptr.add(off * src.esz), len * src.esz) };
        Ok(decode(src.dtype, bytes))
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
        let (h, d) = (self.host("copy_h2d", src)?, self.buf("copy_h2d", dst)?);
        self.copy_host(stream, h, src_off, d, dst_off, rows, true)
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
        let (d, h) = (self.buf("copy_d2h", src)?, self.host("copy_d2h", dst)?);
        self.copy_host(stream, h, dst_off, d, src_off, rows, false)
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
        let (src, dst) = (self.buf("copy_d2d", src)?, self.buf("copy_d2d", dst)?);
        self.bind()?;
        // SAFETY: `Backend` checked both ranges; ordering is the caller's (events).
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                dst.at(dst_off),
                src.at(src_off),
                len * src.esz,
                self.stream(stream).cu_stream(),
            )
        }
        .map_err(|e| self.err("cuMemcpyDtoDAsync", e))
    }

    fn record(&self, stream: Stream) -> Result<EventInner> {
        self.ctx
            .check_err()
            .map_err(|e| self.err("an earlier asynchronous call", e))?;
        let ev = self.record_raw(self.stream(stream))?;
        Ok(EventInner::Cuda(CudaEv(Arc::new(ev))))
    }

    fn wait(&self, stream: Stream, ev: &EventInner) -> Result<()> {
        let ev = self.event("wait", ev)?;
        self.stream(stream)
            .wait(&ev.0)
            .map_err(|e| self.err("cuStreamWaitEvent", e))
    }

    fn synchronize(&self) -> Result<()> {
        for s in [&self.copy, &self.compute, &self.writeback] {
            s.synchronize()
                .map_err(|e| self.err("cuStreamSynchronize", e))?;
        }
        self.ctx
            .check_err()
            .map_err(|e| self.err("an earlier asynchronous call", e))
    }

    fn elapsed_us(&self, a: &EventInner, b: &EventInner) -> Result<f64> {
        let (a, b) = (self.event("elapsed_us", a)?, self.event("elapsed_us", b)?);
        a.0.elapsed_ms(&b.0)
            .map(|ms| ms as f64 * 1e3)
            .map_err(|e| self.err("cuEventElapsedTime", e))
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
        let (x, w, out) = (
            self.buf("gemm", x)?,
            self.buf("gemm", w)?,
            self.buf("gemm", out)?,
        );
        self.gemm_raw(x.at(x_off), w.at(w_off), out.at(out_off), out.esz, m, n, k)
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
        let (x, w, o) = (self.buf(op, x)?, self.buf(op, weight)?, self.buf(op, out)?);
        ops::rmsnorm(self, x.at(x_off), w.ptr, o.at(out_off), rows, dim, eps)
    }

    fn add_bias(
        &self,
        x: &BufInner,
        x_off: usize,
        bias: &BufInner,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let (x, b) = (self.buf("add_bias", x)?, self.buf("add_bias", bias)?);
        ops::add_bias(self, x.at(x_off), b.ptr, rows, dim)
    }

    fn rope_freqs(
        &self,
        inv_freq: &[f32],
        _attention_factor: f32,
        _dynamic: Option<DynamicNtk>,
    ) -> Result<FreqsInner> {
        let buf = self.raw_alloc(inv_freq.len(), 4)?;
        let bytes: Vec<u8> = inv_freq.iter().flat_map(|f| f.to_le_bytes()).collect();
        self.bind()?;
        // SAFETY: `buf` holds `inv_freq.len()` f32 = `bytes.len()` bytes; the
        // copy is synchronous.
        unsafe { cudarc::driver::result::memcpy_htod_sync(buf.ptr, &bytes) }
            .map_err(|e| self.err("cuMemcpyHtoD (rope frequencies)", e))?;
        Ok(FreqsInner::Cuda(CudaFreqs(buf)))
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
        let (x, p) = (self.buf("rope", x)?, self.ids("rope", pos)?);
        let FreqsInner::Cuda(CudaFreqs(f)) = &freqs.inner else {
            return Err(wrong(&self.short, "rope", "frequency table"));
        };
        let factor = freqs.attention_factor;
        ops::rope(
            self,
            x.at(x_off),
            p.at(pos_off),
            f.ptr,
            factor,
            freqs.dynamic,
            r,
        )
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
        let op = match lens {
            None => "attention",
            Some(_) => "attention_ragged",
        };
        let (q, k, v, o) = (
            self.buf(op, q)?,
            self.buf(op, k)?,
            self.buf(op, v)?,
            self.buf(op, out)?,
        );
        let lens = match lens {
            Some((l, off)) => Some(self.ids(op, l)?.at(off)),
            None => None,
        };
        ops::attention(self, q.ptr, k.ptr, v.ptr, o.ptr, a, lens)
    }

    fn silu_gate(&self, gate: &BufInner, up: &BufInner, out: &BufInner, len: usize) -> Result<()> {
        let op = "silu_gate";
        let (g, u, o) = (self.buf(op, gate)?, self.buf(op, up)?, self.buf(op, out)?);
        ops::binary(self, "silu_gate", g.ptr, u.ptr, o.ptr, len)
    }

    fn add(&self, a: &BufInner, b: &BufInner, out: &BufInner, len: usize) -> Result<()> {
        let (a, b, o) = (
            self.buf("add", a)?,
            self.buf("add", b)?,
            self.buf("add", out)?,
        );
        ops::binary(self, "add", a.ptr, b.ptr, o.ptr, len)
    }

    fn scatter(
        &self,
        src: &BufInner,
        src_off: usize,
        dst: &BufInner,
        dst_off: usize,
        rows: Rows,
    ) -> Result<()> {
        let (s, d) = (self.buf("scatter", src)?, self.buf("scatter", dst)?);
        ops::scatter(self, s.at(src_off), d.at(dst_off), rows)
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
        let (s, d) = (self.buf(op, src)?, self.buf(op, dst)?);
        let i = self.ids(op, idx)?.at(idx_off);
        ops::scatter_rows(self, s.at(src_off), d.ptr, d.len, i, rows, width)
    }

    fn embedding(
        &self,
        table: &BufInner,
        ids: &IdInner,
        ids_off: usize,
        out: &BufInner,
        out_off: usize,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let op = "embedding";
        let (t, i, o) = (self.buf(op, table)?, self.ids(op, ids)?, self.buf(op, out)?);
        ops::embedding(self, t.ptr, t.len, i.at(ids_off), o.at(out_off), rows, dim)
    }

    fn argmax(
        &self,
        x: &BufInner,
        rows: usize,
        cols: usize,
        out: &IdInner,
        out_off: usize,
    ) -> Result<()> {
        let (x, o) = (self.buf("argmax", x)?, self.ids("argmax", out)?);
        ops::argmax(self, x.ptr, o.at(out_off), rows, cols)
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
        let (x, o) = (self.buf("sample", x)?, self.ids("sample", out)?);
        ops::sample(self, x.ptr, o.at(out_off), rows, cols, s)
    }
}

impl ops::Launcher for CudaBackend {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn device(&self) -> String {
        self.short.clone()
    }

    fn launch(
        &self,
        kernel: &'static str,
        grid: (usize, usize, usize),
        block: u32,
        args: &[ops::Arg],
    ) -> Result<()> {
        let f = self.funcs.get(kernel).ok_or_else(|| KernelError::Cuda {
            device: self.short.clone(),
            call: "cuModuleGetFunction",
            message: format!("kernel {kernel} was not loaded"),
        })?;
        let mut b = self.compute.launch_builder(f);
        for a in args {
            match a {
                ops::Arg::Ptr(v) | ops::Arg::U64(v) => {
                    b.arg(v);
                }
                ops::Arg::I32(v) => {
                    b.arg(v);
                }
                ops::Arg::F32(v) => {
                    b.arg(v);
                }
            }
        }
        let cfg = LaunchConfig {
            grid_dim: (grid.0 as u32, grid.1 as u32, grid.2 as u32),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `ops` passes the arguments of the kernel's signature in its
        // contract (`kernels/cuda/README.md`), and the grid is within CUDA's
        // limits. Every buffer was checked by `Backend` (its device and dtype,
        // and the extent the kernel touches). The values inside index
        // buffers are not (they live on the device): the kernels bound them
        // themselves, and the emulator tests each with values out of range:
        // an embedding or gather id past the table writes zeros (or, for the
        // skip marker, nothing), a scatter destination past `dst_rows` is
        // skipped, and a ragged length past `kv_capacity` is capped to it.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| KernelError::Cuda {
                device: self.short.clone(),
                call: "cuLaunchKernel",
                message: format!("{kernel}: {e}"),
            })
    }

    fn scratch(&self, kind: ops::ScratchKind, floats: usize) -> Result<u64> {
        let mut s = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match kind {
            ops::ScratchKind::Attention => &mut s.attn,
            ops::ScratchKind::Sampler => &mut s.sample,
        };
        if slot.as_ref().is_none_or(|w| w.len < floats) {
            // The old buffer is freed in order on the compute stream, after
            // the kernels already queued there have read it.
            *slot = Some(self.raw_alloc(floats.max(1), 4)?);
        }
        Ok(slot.as_ref().map_or(0, |w| w.ptr))
    }
}

/// Values per parallel piece of host-side conversions and fills.
const HOST_CHUNK: usize = 1 << 20;

/// f32 values to the bytes of `dtype`, on every core for large inputs.
fn encode(dtype: Dtype, data: &[f32]) -> Vec<u8> {
    crate::stored::encode(dtype, data)
}

/// Zeroes `bytes` bytes at `ptr`, on every core for large buffers (a host
/// store can be tens of GB, and is zeroed before anything reads it).
///
/// # Safety
/// `ptr` must be valid for writes of `bytes` bytes, and nothing else may
/// touch them meanwhile.
unsafe fn zero_host(ptr: *mut u8, bytes: usize) {
    use rayon::prelude::*;
    let chunk = HOST_CHUNK * 16;
    let base = ptr as usize;
    (0..bytes.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let start = c * chunk;
        let len = chunk.min(bytes - start);
        // SAFETY: `[start, start + len)` lies within the caller's range, and
        // the pieces do not overlap.
        unsafe { std::ptr::write_bytes((base + start) as *mut u8, 0, len) };
    });
}

/// Bytes of `dtype` back to f32 values.
fn decode(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    crate::stored::to_f32(bytes, dtype)
}

#[cfg(test)]
mod emulated;
#[cfg(test)]
mod tests;
