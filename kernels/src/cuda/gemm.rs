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
use cudarc::driver::sys::CUdeviceptr;

use super::CudaBackend;
use crate::{Dtype, KernelError, Result};

impl CudaBackend {
    /// `out = x . w^T` at raw pointers (`Backend` checked the ranges), `esz`
    /// bytes per element.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm_raw(
        &self,
        x: CUdeviceptr,
        w: CUdeviceptr,
        out: CUdeviceptr,
        esz: usize,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let int = |v: usize| {
            i32::try_from(v).map_err(|_| KernelError::Shape {
                op: "gemm",
                device: self.short.clone(),
                shape: format!("m={m} n={n} k={k}"),
                reason: "dimensions must fit in 32 bits for cuBLAS".into(),
            })
        };
        if k == 0 {
            self.bind()?;
            // SAFETY: `Backend` checked the out range.
            return unsafe {
                cudarc::driver::result::memset_d8_async(
                    out,
                    0,
                    m * n * esz,
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
        // SAFETY: `Backend` checked the three ranges against the buffers, all
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
                w as *const c_void,
                ty,
                ki,
                x as *const c_void,
                ty,
                ki,
                &beta as *const f32 as *const c_void,
                out as *mut c_void,
                ty,
                ni,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| self.err("cublasGemmEx", e))
    }
}
