//! Kernel launches on the compute stream: the contract with
//! `kernels/cuda/*.cu` (names, argument order, launch shapes) lives in
//! `kernels/cuda/README.md`. `Backend` has checked every range; here sizes
//! are converted to the kernels' integer types (checked) and the grid is
//! kept within CUDA's limits.

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{LaunchArgs, LaunchConfig, PushKernelArg};

use super::{CudaBackend, CudaBuf};
use crate::{AttnShape, KernelError, Result, RopeShape, Rows, SampleArgs};

/// Keys per flash-decoding split.
const SPLIT_LEN: usize = 256;
/// The most f32 values of attention partials one launch may use (256 MiB).
const ATTN_SCRATCH: usize = 64 << 20;
/// CUDA's limit on a grid's y and z.
const GRID_YZ: usize = 65_535;

impl CudaBackend {
    fn int(&self, op: &'static str, v: usize) -> Result<i32> {
        i32::try_from(v).map_err(|_| KernelError::Shape {
            op,
            device: self.short.clone(),
            shape: v.to_string(),
            reason: "a size above 2^31 for a kernel argument".into(),
        })
    }

    fn builder(&self, name: &'static str) -> Result<LaunchArgs<'_>> {
        let f = self.funcs.get(name).ok_or_else(|| KernelError::Cuda {
            device: self.short.clone(),
            call: "cuModuleGetFunction",
            message: format!("kernel {name} was not loaded"),
        })?;
        Ok(self.compute.launch_builder(f))
    }

    fn go(
        &self,
        mut b: LaunchArgs<'_>,
        name: &'static str,
        grid: (usize, usize, usize),
        block: u32,
    ) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: (grid.0 as u32, grid.1 as u32, grid.2 as u32),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's signature in the contract
        // (`kernels/cuda/README.md`), every pointer was range-checked by
        // `Backend` for the extent the kernel touches, and the grid is within
        // CUDA's limits (checked by the callers).
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| KernelError::Cuda {
                device: self.short.clone(),
                call: "cuLaunchKernel",
                message: format!("{name}: {e}"),
            })
    }

    pub(super) fn k_rmsnorm(
        &self,
        x: &CudaBuf,
        w: &CudaBuf,
        o: &CudaBuf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        let (r, d) = (self.int("rmsnorm", rows)?, self.int("rmsnorm", dim)?);
        let mut b = self.builder("rmsnorm")?;
        b.arg(&x.ptr)
            .arg(&w.ptr)
            .arg(&o.ptr)
            .arg(&r)
            .arg(&d)
            .arg(&eps);
        self.go(b, "rmsnorm", (rows, 1, 1), 256)
    }

    pub(super) fn k_rope(&self, x: CUdeviceptr, pos: CUdeviceptr, r: RopeShape) -> Result<()> {
        let op = "rope";
        let (rows, stride) = (self.int(op, r.rows)?, self.int(op, r.row_stride)?);
        let (heads, hd) = (self.int(op, r.n_heads)?, self.int(op, r.head_dim)?);
        let inter = r.interleaved as i32;
        let mut b = self.builder(op)?;
        b.arg(&x)
            .arg(&pos)
            .arg(&rows)
            .arg(&stride)
            .arg(&heads)
            .arg(&hd)
            .arg(&r.theta)
            .arg(&inter);
        self.go(b, op, (r.rows, 1, 1), 128)
    }

    pub(super) fn k_binary(
        &self,
        name: &'static str,
        a: CUdeviceptr,
        b2: CUdeviceptr,
        o: CUdeviceptr,
        len: usize,
    ) -> Result<()> {
        let n = len as u64;
        let mut b = self.builder(name)?;
        b.arg(&a).arg(&b2).arg(&o).arg(&n);
        self.go(b, name, (len.div_ceil(256).clamp(1, 4096), 1, 1), 256)
    }

    pub(super) fn k_scatter(&self, src: CUdeviceptr, dst: CUdeviceptr, r: Rows) -> Result<()> {
        let esz = self.dtype.bytes() as u64;
        let (w, sp, dp) = (r.width as u64, r.src_pitch as u64, r.dst_pitch as u64);
        let mut g0 = 0;
        while g0 < r.rows {
            let groups = (r.rows - g0).min(GRID_YZ);
            let gi = groups as i32;
            let (s, d) = (src + g0 as u64 * sp * esz, dst + g0 as u64 * dp * esz);
            let mut b = self.builder("scatter")?;
            b.arg(&s).arg(&d).arg(&gi).arg(&w).arg(&sp).arg(&dp);
            self.go(
                b,
                "scatter",
                (r.width.div_ceil(256).clamp(1, GRID_YZ), groups, 1),
                256,
            )?;
            g0 += groups;
        }
        Ok(())
    }

    pub(super) fn k_embedding(
        &self,
        t: &CudaBuf,
        ids: CUdeviceptr,
        o: &CudaBuf,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let op = "embedding";
        let (r, d, v) = (
            self.int(op, rows)?,
            self.int(op, dim)?,
            self.int(op, t.len / dim)?,
        );
        let mut b = self.builder(op)?;
        b.arg(&t.ptr).arg(&ids).arg(&o.ptr).arg(&r).arg(&d).arg(&v);
        self.go(b, op, (rows, 1, 1), 256)
    }

    pub(super) fn k_argmax(
        &self,
        x: &CudaBuf,
        out: CUdeviceptr,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let (r, c) = (self.int("argmax", rows)?, self.int("argmax", cols)?);
        let mut b = self.builder("argmax")?;
        b.arg(&x.ptr).arg(&out).arg(&r).arg(&c);
        self.go(b, "argmax", (rows, 1, 1), 256)
    }

    pub(super) fn k_sample(
        &self,
        x: &CudaBuf,
        out: CUdeviceptr,
        rows: usize,
        cols: usize,
        s: SampleArgs,
    ) -> Result<()> {
        let (r, c) = (self.int("sample", rows)?, self.int("sample", cols)?);
        let top_k = self.int("sample", s.top_k)?;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let need = rows * cols;
        if scratch.sample.as_ref().is_none_or(|w| w.len < need) {
            scratch.sample = Some(self.raw_alloc(need, 4)?);
        }
        let work = scratch.sample.as_ref().map_or(0, |w| w.ptr);
        let mut b = self.builder("sample")?;
        b.arg(&x.ptr)
            .arg(&work)
            .arg(&out)
            .arg(&r)
            .arg(&c)
            .arg(&s.inv_temperature)
            .arg(&top_k)
            .arg(&s.top_p)
            .arg(&s.seed)
            .arg(&s.step);
        self.go(b, "sample", (rows, 1, 1), 256)
    }

    /// Flash-decoding: partials per split of `SPLIT_LEN` keys, then one
    /// combine. Scratch is sized by the cache's capacity (so it is allocated
    /// once per shape, not as the context grows); a call whose partials would
    /// pass [`ATTN_SCRATCH`] or CUDA's grid limits runs in slices of query rows.
    pub(super) fn k_attention(
        &self,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        o: &CudaBuf,
        a: AttnShape,
    ) -> Result<()> {
        let op = "attention";
        let (hd, esz) = (a.head_dim, q.esz as u64);
        let (qd, kvd) = (a.n_heads * hd, a.n_kv_heads * hd);
        let max_splits = a.kv_capacity.div_ceil(SPLIT_LEN).max(1);
        let per_row = a.n_heads * max_splits * (hd + 2);
        let rows = a.batch * a.q_len;
        let per_launch = (ATTN_SCRATCH / per_row).clamp(1, GRID_YZ);
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let need = per_row * rows.min(per_launch);
        if scratch.attn.as_ref().is_none_or(|w| w.len < need) {
            scratch.attn = Some(self.raw_alloc(need, 4)?);
        }
        let ws = scratch.attn.as_ref().map_or(0, |w| w.ptr);
        // One launch for the whole batch when it fits; else one sequence and
        // a slice of its queries at a time.
        let slices: Vec<(usize, usize, usize, usize)> = if rows <= per_launch {
            vec![(0, a.batch, 0, a.q_len)]
        } else {
            (0..a.batch)
                .flat_map(|b| {
                    (0..a.q_len)
                        .step_by(per_launch)
                        .map(move |j| (b, 1, j, (a.q_len - j).min(per_launch)))
                })
                .collect()
        };
        let (heads, kv_heads, hd_i) = (
            self.int(op, a.n_heads)?,
            self.int(op, a.n_kv_heads)?,
            self.int(op, hd)?,
        );
        let (cap, split) = (self.int(op, a.kv_capacity)?, SPLIT_LEN as i32);
        if a.n_heads > GRID_YZ {
            return Err(KernelError::Shape {
                op,
                device: self.short.clone(),
                shape: format!("{a:?}"),
                reason: "more than 65535 heads".into(),
            });
        }
        for (b0, nb, j0, nq) in slices {
            let n_splits = (a.q_pos0 + j0 + nq).div_ceil(SPLIT_LEN).max(1);
            let row0 = (b0 * a.q_len + j0) as u64;
            let qp = q.ptr + row0 * qd as u64 * esz;
            let op_ = o.ptr + row0 * qd as u64 * esz;
            let kvoff = (b0 * a.kv_capacity * kvd) as u64 * esz;
            let (kp, vp) = (k.ptr + kvoff, v.ptr + kvoff);
            let part_o = ws;
            let part_ml = ws + (nb * nq * a.n_heads * n_splits * hd * 4) as u64;
            let (nb_i, nq_i, pos0) = (
                self.int(op, nb)?,
                self.int(op, nq)?,
                self.int(op, a.q_pos0 + j0)?,
            );
            let ns = self.int(op, n_splits)?;
            let mut b = self.builder("attn_split")?;
            b.arg(&qp)
                .arg(&kp)
                .arg(&vp)
                .arg(&part_o)
                .arg(&part_ml)
                .arg(&nb_i)
                .arg(&nq_i)
                .arg(&pos0)
                .arg(&heads)
                .arg(&kv_heads)
                .arg(&hd_i)
                .arg(&cap)
                .arg(&a.scale)
                .arg(&split)
                .arg(&ns);
            self.go(b, "attn_split", (n_splits, a.n_heads, nb * nq), 128)?;
            let r = self.int(op, nb * nq)?;
            let mut b = self.builder("attn_combine")?;
            b.arg(&part_o)
                .arg(&part_ml)
                .arg(&op_)
                .arg(&r)
                .arg(&heads)
                .arg(&hd_i)
                .arg(&ns);
            self.go(b, "attn_combine", (a.n_heads, nb * nq, 1), 128)?;
        }
        Ok(())
    }
}
