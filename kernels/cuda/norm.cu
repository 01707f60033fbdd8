// RMS normalisation. Compiled after common.cuh (concatenated by the runtime; no #include).

// rmsnorm_<dtype>(x, w, out, rows, dim, eps): for each row,
//   out[i] = x[i] * (1 / sqrt(mean_j(x[j]^2) + eps)) * w[i]
// grid (rows), block 256: one block per row, threads stride over the row (coalesced). The row is
// read completely (sum of squares + block reduction) before anything is written, so `out` may
// alias `x`.
template <class D>
__device__ __forceinline__ void rmsnorm_body(const typename D::T* x, const typename D::T* w,
                                             typename D::T* out, int rows, int dim, float eps) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const unsigned long long base = (unsigned long long)row * (unsigned long long)dim;
    const typename D::T* xr = x + base;
    typename D::T* outr = out + base;

    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = D::load(xr[i]);
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float inv_rms = 1.0f / sqrtf(ss / (float)dim + eps);

    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        outr[i] = D::store(D::load(xr[i]) * inv_rms * D::load(w[i]));
    }
}

#define KVPR_RMSNORM(SFX, D)                                                                   \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        rmsnorm_##SFX(const D::T* x, const D::T* w, D::T* out, int rows, int dim, float eps) { \
        rmsnorm_body<D>(x, w, out, rows, dim, eps);                                            \
    }
KVPR_FOR_EACH_DTYPE(KVPR_RMSNORM)
