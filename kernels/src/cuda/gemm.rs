//! GEMM through cuBLAS on the compute stream.
//!
//! We want row-major `out[m, n] = x[m, k] . w[n, k]^T`. cuBLAS is column-major,
//! and a row-major `[r, c]` matrix is the column-major `[c, r]` matrix of its
//! transpose. So we ask cuBLAS for the column-major `out^T[n, m] = w . x^T`:
//! `A` = the weights seen column-major as `[k, n]` (that is `w^T`), transposed
//! (`op(A) = w`, `lda = k`); `B` = `x` seen column-major as `[k, m]` (that is
//! `x^T`), not transposed (`ldb = k`); `C` = `out` seen column-major as `[n, m]`
//! (`ldc = n`). Accumulation is f32 for every dtype.

use std::ffi::c_void;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};

use super::{CudaBackend, CudaBuf};
use crate::{check_range, mul_checked, Dtype, KernelError, Result};

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm(
        &self,
        x: &CudaBuf,
        x_off: usize,
        w: &CudaBuf,
        w_off: usize,
        out: &CudaBuf,
        out_off: usize,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let d = &self.device;
        check_range(
            "gemm",
            d,
            "x",
            x_off,
            mul_checked("gemm", d, &[m, k])?,
            x.len,
        )?;
        check_range(
            "gemm",
            d,
            "w",
            w_off,
            mul_checked("gemm", d, &[n, k])?,
            w.len,
        )?;
        check_range(
            "gemm",
            d,
            "out",
            out_off,
            mul_checked("gemm", d, &[m, n])?,
            out.len,
        )?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let int = |v: usize| {
            i32::try_from(v).map_err(|_| KernelError::Shape {
                op: "gemm",
                device: d.clone(),
                shape: format!("m={m} n={n} k={k}"),
                reason: "dimensions must fit in 32 bits for cuBLAS".into(),
            })
        };
        if k == 0 {
            self.bind()?;
            // SAFETY: the out range was checked above.
            return unsafe {
                cudarc::driver::result::memset_d8_async(
                    out.at(out_off),
                    0,
                    m * n * out.esz,
                    self.compute.cu_stream(),
                )
            }
            .map_err(|e| self.err("cuMemsetD8Async", e));
        }
        let (mi, ni, ki) = (int(m)?, int(n)?, int(k)?);
        let ty = match self.dtype {
            Dtype::F32 => cudaDataType::CUDA_R_32F,
            Dtype::F16 => cudaDataType::CUDA_R_16F,
            Dtype::Bf16 => cudaDataType::CUDA_R_16BF,
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        self.bind()?;
        // SAFETY: the three ranges were checked against the buffers above, all
        // in the backend's dtype; the handle is bound to the compute stream;
        // alpha/beta are f32 as CUBLAS_COMPUTE_32F requires.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                &alpha as *const f32 as *const c_void,
                w.at(w_off) as *const c_void,
                ty,
                ki,
                x.at(x_off) as *const c_void,
                ty,
                ki,
                &beta as *const f32 as *const c_void,
                out.at(out_off) as *mut c_void,
                ty,
                ni,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| self.err("cublasGemmEx", e))
    }
}
