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
//! / `host_read` wait for in-flight copies of the same elements.
//!
//! **Pinned memory.** Host buffers are page-locked with flags 0, not cudarc's
//! default write-combined `alloc_pinned`: write-combined memory is uncached
//! and very slow for the CPU to read, and the store is read back by the CPU
//! (`host_read`) as well as by DMA. `alloc_host_pageable` gives plain memory
//! to measure the pageable path.
//!
//! Only GEMM among the compute ops runs here yet; the others return
//! [`KernelError::Unsupported`].

mod gemm;

use std::ops::Range;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{self, CUdeviceptr, CUevent_flags};
use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, PinnedHostSlice};

use crate::{check_range, BackendOptions, Dtype, KernelError, Result, Stream};

/// A device buffer: raw allocation in the compute dtype.
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
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    fn at(&self, off: usize) -> CUdeviceptr {
        self.ptr + (off * self.esz) as CUdeviceptr
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

/// Owns the host allocation `CudaHostBuf::ptr` points into (freed on drop).
#[allow(dead_code)]
enum HostMem {
    Pinned(PinnedHostSlice<u8>),
    Pageable(Box<[u8]>),
}

/// A host buffer: pinned (or pageable), with the copies in flight on it.
pub(crate) struct CudaHostBuf {
    ptr: *mut u8,
    len: usize,
    esz: usize,
    dtype: Dtype,
    pending: Mutex<Vec<(Range<usize>, Arc<CudaEvent>)>>,
    mem: HostMem,
}

// SAFETY: `ptr` points into `mem`, which this struct owns and never moves;
// CPU access goes through `host_write` / `host_read`, which wait for the
// copies recorded in `pending` that overlap the elements they touch.
unsafe impl Send for CudaHostBuf {}
unsafe impl Sync for CudaHostBuf {}

impl CudaHostBuf {
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    pub(crate) fn is_pinned(&self) -> bool {
        matches!(self.mem, HostMem::Pinned(_))
    }
    /// Waits for every in-flight copy touching `r`, and forgets finished ones.
    fn settle(&self, r: &Range<usize>, dev: &str) -> Result<()> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (rr, ev) in p.iter() {
            if rr.start < r.end && r.start < rr.end {
                ev.synchronize()
                    .map_err(|e| cuda_err(dev, "cuEventSynchronize", e))?;
            }
        }
        p.retain(|(rr, ev)| !(ev.is_complete() || rr.start < r.end && r.start < rr.end));
        Ok(())
    }
    fn track(&self, r: Range<usize>, ev: CudaEvent) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() >= 64 {
            p.retain(|(_, e)| !e.is_complete());
        }
        p.push((r, Arc::new(ev)));
    }
}

/// A recorded CUDA event (timing enabled).
#[derive(Clone)]
pub(crate) struct CudaEv(Arc<CudaEvent>);

pub(crate) struct CudaBackend {
    device: String,
    dtype: Dtype,
    ctx: Arc<CudaContext>,
    copy: Arc<CudaStream>,
    compute: Arc<CudaStream>,
    writeback: Arc<CudaStream>,
    blas: cudarc::cublas::CudaBlas,
}

fn cuda_err(device: &str, call: &'static str, e: impl std::fmt::Display) -> KernelError {
    KernelError::Cuda {
        device: device.to_string(),
        call,
        message: e.to_string(),
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
        Ok(CudaBackend {
            device: format!("{device} ({gpu}, {})", dtype.name()),
            dtype,
            ctx,
            copy,
            compute,
            writeback,
            blas,
        })
    }

    pub(crate) fn name(&self) -> String {
        self.device.clone()
    }

    pub(crate) fn dtype(&self) -> Dtype {
        self.dtype
    }

    pub(crate) fn unsupported(&self, op: &'static str) -> KernelError {
        KernelError::Unsupported {
            op,
            device: self.device.clone(),
        }
    }

    fn err(&self, call: &'static str, e: impl std::fmt::Display) -> KernelError {
        cuda_err(&self.device, call, e)
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

    pub(crate) fn alloc(&self, len: usize) -> Result<CudaBuf> {
        let esz = self.dtype.bytes();
        let bytes = len.checked_mul(esz).ok_or_else(|| KernelError::Shape {
            op: "alloc",
            device: self.device.clone(),
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

    pub(crate) fn upload(&self, data: &[f32]) -> Result<CudaBuf> {
        let buf = self.alloc(data.len())?;
        let bytes = encode(self.dtype, data);
        self.bind()?;
        // SAFETY: `buf` holds `bytes.len()` bytes; the copy is synchronous.
        unsafe { cudarc::driver::result::memcpy_htod_sync(buf.ptr, &bytes) }
            .map_err(|e| self.err("cuMemcpyHtoD", e))?;
        Ok(buf)
    }

    pub(crate) fn download(&self, buf: &CudaBuf, off: usize, len: usize) -> Result<Vec<f32>> {
        check_range("download", &self.device, "buffer", off, len, buf.len)?;
        self.synchronize()?;
        let mut bytes = vec![0u8; len * buf.esz];
        // SAFETY: the range was checked; all streams are idle.
        unsafe { cudarc::driver::result::memcpy_dtoh_sync(&mut bytes, buf.at(off)) }
            .map_err(|e| self.err("cuMemcpyDtoH", e))?;
        Ok(decode(self.dtype, &bytes))
    }

    pub(crate) fn alloc_host(&self, len: usize, pinned: bool) -> Result<CudaHostBuf> {
        let esz = self.dtype.bytes();
        let bytes = len.checked_mul(esz).ok_or_else(|| KernelError::Shape {
            op: "alloc_host",
            device: self.device.clone(),
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
            unsafe { std::ptr::write_bytes(ptr, 0, bytes.max(1)) };
            (ptr, HostMem::Pinned(p))
        } else {
            let mut b = vec![0u8; bytes.max(1)].into_boxed_slice();
            (b.as_mut_ptr(), HostMem::Pageable(b))
        };
        Ok(CudaHostBuf {
            ptr,
            len,
            esz,
            dtype: self.dtype,
            pending: Mutex::new(Vec::new()),
            mem,
        })
    }

    pub(crate) fn host_write(&self, dst: &CudaHostBuf, off: usize, data: &[f32]) -> Result<()> {
        check_range(
            "host_write",
            &self.device,
            "host buffer",
            off,
            data.len(),
            dst.len,
        )?;
        dst.settle(&(off..off + data.len()), &self.device)?;
        let bytes = encode(dst.dtype, data);
        // SAFETY: range checked; no copy in flight touches these elements.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.ptr.add(off * dst.esz), bytes.len())
        };
        Ok(())
    }

    pub(crate) fn host_read(&self, src: &CudaHostBuf, off: usize, len: usize) -> Result<Vec<f32>> {
        check_range("host_read", &self.device, "host buffer", off, len, src.len)?;
        src.settle(&(off..off + len), &self.device)?;
        // SAFETY: range checked; no copy in flight touches these elements.
        let bytes =
            unsafe { std::slice::from_raw_parts(src.ptr.add(off * src.esz), len * src.esz) };
        Ok(decode(src.dtype, bytes))
    }

    fn record_raw(&self, s: &CudaStream) -> Result<CudaEvent> {
        s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| self.err("cuEventRecord", e))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copy_h2d(
        &self,
        stream: Stream,
        src: &CudaHostBuf,
        src_off: usize,
        dst: &CudaBuf,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        check_range("copy_h2d", &self.device, "source", src_off, len, src.len)?;
        check_range(
            "copy_h2d",
            &self.device,
            "destination",
            dst_off,
            len,
            dst.len,
        )?;
        if len == 0 {
            return Ok(());
        }
        self.bind()?;
        let s = self.stream(stream);
        // SAFETY: both ranges were checked and the host memory lives as long
        // as `src`, whose pending list keeps CPU writers away until the copy ends.
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                dst.at(dst_off),
                src.ptr.add(src_off * src.esz) as *const _,
                len * dst.esz,
                s.cu_stream(),
            )
            .result()
        }
        .map_err(|e| self.err("cuMemcpyHtoDAsync", e))?;
        src.track(src_off..src_off + len, self.record_raw(s)?);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copy_d2h(
        &self,
        stream: Stream,
        src: &CudaBuf,
        src_off: usize,
        dst: &CudaHostBuf,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        check_range("copy_d2h", &self.device, "source", src_off, len, src.len)?;
        check_range(
            "copy_d2h",
            &self.device,
            "destination",
            dst_off,
            len,
            dst.len,
        )?;
        if len == 0 {
            return Ok(());
        }
        self.bind()?;
        let s = self.stream(stream);
        // SAFETY: as in `copy_h2d`.
        unsafe {
            sys::cuMemcpyDtoHAsync_v2(
                dst.ptr.add(dst_off * dst.esz) as *mut _,
                src.at(src_off),
                len * src.esz,
                s.cu_stream(),
            )
            .result()
        }
        .map_err(|e| self.err("cuMemcpyDtoHAsync", e))?;
        dst.track(dst_off..dst_off + len, self.record_raw(s)?);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copy_d2d(
        &self,
        stream: Stream,
        src: &CudaBuf,
        src_off: usize,
        dst: &CudaBuf,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        check_range("copy_d2d", &self.device, "source", src_off, len, src.len)?;
        check_range(
            "copy_d2d",
            &self.device,
            "destination",
            dst_off,
            len,
            dst.len,
        )?;
        if len == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both ranges were checked; ordering is the caller's (events).
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

    pub(crate) fn record(&self, stream: Stream) -> Result<CudaEv> {
        self.ctx
            .check_err()
            .map_err(|e| self.err("an earlier asynchronous call", e))?;
        Ok(CudaEv(Arc::new(self.record_raw(self.stream(stream))?)))
    }

    pub(crate) fn wait(&self, stream: Stream, ev: &CudaEv) -> Result<()> {
        self.stream(stream)
            .wait(&ev.0)
            .map_err(|e| self.err("cuStreamWaitEvent", e))
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        for s in [&self.copy, &self.compute, &self.writeback] {
            s.synchronize()
                .map_err(|e| self.err("cuStreamSynchronize", e))?;
        }
        self.ctx
            .check_err()
            .map_err(|e| self.err("an earlier asynchronous call", e))
    }

    pub(crate) fn elapsed_us(&self, a: &CudaEv, b: &CudaEv) -> Result<f64> {
        a.0.elapsed_ms(&b.0)
            .map(|ms| ms as f64 * 1e3)
            .map_err(|e| self.err("cuEventElapsedTime", e))
    }
}

/// f32 values to the bytes of `dtype`.
fn encode(dtype: Dtype, data: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => data
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::Bf16 => data
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

/// Bytes of `dtype` back to f32 values.
fn decode(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}

#[cfg(test)]
mod tests;
