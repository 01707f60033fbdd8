// Rotary position embedding. Compiled after common.cuh (concatenated by the runtime; no #include).

// rope_<dtype>(x, pos, rows, row_stride, n_heads, head_dim, theta, interleaved), in place:
// row r starts at x + r*row_stride, holds n_heads heads of head_dim values and sits at position
// pos[r]. Pair i (0 <= i < head_dim/2) of each head is (2i, 2i+1) if interleaved, else
// (i, i + head_dim/2); it is rotated by the angle a = pos * theta^(-2i/head_dim), computed in
// double: c = (float)cos(a), s = (float)sin(a), x0' = x0*c - x1*s, x1' = x0*s + x1*c (f32).
// grid (rows), block 128: one block per row, threads share out the n_heads * head_dim/2 pairs.
template <class D>
__device__ __forceinline__ void rope_body(typename D::T* x, const unsigned* pos, int rows,
                                          int row_stride, int n_heads, int head_dim, float theta,
                                          int interleaved) {
    const int row = blockIdx.x;
    if (row >= rows || head_dim < 2) return;
    typename D::T* xr = x + (long long)row * (long long)row_stride;
    const double p = (double)pos[row];
    const int half = head_dim / 2;
    // Thread k handles pair i = k % half of heads g, g + groups, ... (g = k / half): the double
    // precision angle is computed once per (row, i, group) and reused across heads, and all 128
    // threads have work when half < 128.
    const int groups = max(1, (int)blockDim.x / half);

    for (int k = threadIdx.x; k < half * groups; k += blockDim.x) {
        const int i = k % half, g = k / half;
        const double inv_freq = 1.0 / pow((double)theta, (double)(2 * i) / (double)head_dim);
        double sd, cd;
        sincos(p * inv_freq, &sd, &cd);
        const float c = (float)cd, s = (float)sd;
        const int i0 = interleaved ? 2 * i : i;
        const int i1 = interleaved ? 2 * i + 1 : i + half;
        for (int h = g; h < n_heads; h += groups) {
            typename D::T* head = xr + h * head_dim;
            const float x0 = D::load(head[i0]), x1 = D::load(head[i1]);
            head[i0] = D::store(x0 * c - x1 * s);
            head[i1] = D::store(x0 * s + x1 * c);
        }
    }
}

#define KVPR_ROPE(SFX, D)                                                                        \
    extern "C" __global__ void __launch_bounds__(128)                                            \
        rope_##SFX(D::T* x, const unsigned* pos, int rows, int row_stride, int n_heads,          \
                   int head_dim, float theta, int interleaved) {                                 \
        rope_body<D>(x, pos, rows, row_stride, n_heads, head_dim, theta, interleaved);           \
    }
KVPR_FOR_EACH_DTYPE(KVPR_ROPE)
