// Element-wise kernels and strided copies. Compiled after common.cuh (concatenated by the runtime;
// no #include). Each thread reads its element(s) before writing the same index, so outputs may
// alias inputs.

// silu_gate_<dtype>(gate, up, out, n): out[i] = gate[i] / (1 + exp(-gate[i])) * up[i].
// Grid-stride loop over n; block 256, any grid.
template <class D>
__device__ __forceinline__ void silu_gate_body(const typename D::T* gate, const typename D::T* up,
                                               typename D::T* out, unsigned long long n) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        const float g = D::load(gate[i]);
        out[i] = D::store(g / (1.0f + expf(-g)) * D::load(up[i]));
    }
}

// add_<dtype>(a, b, out, n): out[i] = a[i] + b[i]. Grid-stride loop over n; block 256, any grid.
template <class D>
__device__ __forceinline__ void add_body(const typename D::T* a, const typename D::T* b,
                                         typename D::T* out, unsigned long long n) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += stride) {
        out[i] = D::store(D::load(a[i]) + D::load(b[i]));
    }
}

// add_bias_<dtype>(x, bias, rows, dim), in place: x[r*dim + j] += bias[j] for r < rows, j < dim
// (f32 sum, stored in the dtype). grid (ceil(dim/256) capped at 65535, rows capped at 65535),
// block 256; both dimensions loop, so any grid covers everything. `bias` is not inside x.
template <class D>
__device__ __forceinline__ void add_bias_body(typename D::T* x, const typename D::T* bias,
                                              int rows, int dim) {
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        typename D::T* xr = x + (unsigned long long)r * (unsigned long long)dim;
        // Unsigned: j + stride stays below 2^32 (dim < 2^31, stride < 2^24).
        for (unsigned j = blockIdx.x * blockDim.x + threadIdx.x; j < (unsigned)dim;
             j += gridDim.x * blockDim.x) {
            xr[j] = D::store(D::load(xr[j]) + D::load(bias[j]));
        }
    }
}

// scatter_<dtype>(src, dst, groups, group_len, src_stride, dst_stride):
//   dst[g*dst_stride + i] = src[g*src_stride + i] for g < groups, i < group_len.
// grid (min(ceil(group_len/256), 65535), groups), block 256. Both dimensions loop, so any grid
// covers everything (also groups > 65535, the limit of gridDim.y).
template <class D>
__device__ __forceinline__ void scatter_body(const typename D::T* src, typename D::T* dst,
                                             int groups, unsigned long long group_len,
                                             unsigned long long src_stride,
                                             unsigned long long dst_stride) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (int g = blockIdx.y; g < groups; g += gridDim.y) {
        const typename D::T* s = src + (unsigned long long)g * src_stride;
        typename D::T* d = dst + (unsigned long long)g * dst_stride;
        for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
             i < group_len; i += stride) {
            d[i] = s[i];
        }
    }
}

// scatter_rows_<dtype>(src, dst, idx, rows, width, dst_rows):
//   dst[idx[r]*width + i] = src[r*width + i] for r < rows, i < width, when idx[r] < dst_rows;
//   a row whose index is not below dst_rows is skipped. Indices should differ (which of two equal
//   ones lands is unspecified). grid (ceil(width/256) capped at 65535, rows capped at 65535),
//   block 256; both dimensions loop, so any grid covers everything.
template <class D>
__device__ __forceinline__ void scatter_rows_body(const typename D::T* src, typename D::T* dst,
                                                  const unsigned* idx, int rows,
                                                  unsigned long long width,
                                                  unsigned long long dst_rows) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const unsigned long long to = idx[r];
        if (to >= dst_rows) continue;
        const typename D::T* s = src + (unsigned long long)r * width;
        typename D::T* d = dst + to * width;
        for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
             i < width; i += stride) {
            d[i] = s[i];
        }
    }
}

#define KVPR_ELEMENTWISE(SFX, D)                                                              \
    extern "C" __global__ void __launch_bounds__(256)                                         \
        silu_gate_##SFX(const D::T* gate, const D::T* up, D::T* out, unsigned long long n) {  \
        silu_gate_body<D>(gate, up, out, n);                                                  \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(256)                                         \
        add_##SFX(const D::T* a, const D::T* b, D::T* out, unsigned long long n) {            \
        add_body<D>(a, b, out, n);                                                            \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(256)                                         \
        add_bias_##SFX(D::T* x, const D::T* bias, int rows, int dim) {                        \
        add_bias_body<D>(x, bias, rows, dim);                                                 \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(256)                                         \
        scatter_##SFX(const D::T* src, D::T* dst, int groups, unsigned long long group_len,   \
                      unsigned long long src_stride, unsigned long long dst_stride) {         \
        scatter_body<D>(src, dst, groups, group_len, src_stride, dst_stride);                 \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(256)                                         \
        scatter_rows_##SFX(const D::T* src, D::T* dst, const unsigned* idx, int rows,         \
                           unsigned long long width, unsigned long long dst_rows) {           \
        scatter_rows_body<D>(src, dst, idx, rows, width, dst_rows);                           \
    }
KVPR_FOR_EACH_DTYPE(KVPR_ELEMENTWISE)
