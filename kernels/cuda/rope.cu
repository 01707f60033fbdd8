// Rotary position embedding. Compiled after common.cuh (concatenated by the runtime; no #include).

// rope_<dtype>(x, pos, inv_freq, attn_factor, rows, row_stride, n_heads, head_dim, interleaved,
//              ntk_factor, ntk_max_pos, ntk_min_len),
// in place: row r starts at x + r*row_stride, holds n_heads heads of head_dim values and sits at
// position p = pos[r]. Pair i (0 <= i < head_dim/2) of each head is (2i, 2i+1) if interleaved, else
// (i, i + head_dim/2); it is rotated by the angle a = (double)p * (double)inv_freq[i], computed
// in double: c = (float)cos(a) * attn_factor, s = (float)sin(a) * attn_factor (the products in
// f32), x0' = x0*c - x1*s, x1' = x0*s + x1*c (f32). `inv_freq` is the host's f32 table of
// head_dim/2 inverse frequencies (default, linear, llama3, YaRN, ...: the scaling is the table's),
// whatever the dtype of x.
// Dynamic NTK (ntk_factor > 0; kernels::DynamicNtk): with L = max(p + 1, ntk_min_len) and
// L > ntk_max_pos, the row's frequencies are inv_freq[i] * pow(x, -2i / (head_dim - 2)),
// x = ntk_factor * L / ntk_max_pos - (ntk_factor - 1), all in double (twin::rope_angle).
// grid (rows), block 128: one block per row, threads share out the n_heads * head_dim/2 pairs.
template <class D>
__device__ __forceinline__ void rope_body(typename D::T* x, const unsigned* pos,
                                          const float* inv_freq, float attn_factor, int rows,
                                          int row_stride, int n_heads, int head_dim,
                                          int interleaved, float ntk_factor,
                                          int ntk_max_pos, int ntk_min_len) {
    const int row = blockIdx.x;
    if (row >= rows || head_dim < 2) return;
    typename D::T* xr = x + (long long)row * (long long)row_stride;
    const double p = (double)pos[row];
    const int half = head_dim / 2;
    // Dynamic NTK: the ratio x of this row's base (1: the table as it is).
    double ntk_x = 1.0;
    if (ntk_factor > 0.0f) {
        const double len = fmax((double)pos[row] + 1.0, (double)ntk_min_len);
        const double f = (double)ntk_factor, m = (double)ntk_max_pos;
        if (len > m) ntk_x = f * len / m - (f - 1.0);
    }
    // Thread k handles pair i = k % half of heads g, g + groups, ... (g = k / half): the double
    // precision angle is computed once per (row, i, group) and reused across heads, and all 128
    // threads have work when half < 128.
    const int groups = max(1, (int)blockDim.x / half);

    for (int k = threadIdx.x; k < half * groups; k += blockDim.x) {
        const int i = k % half, g = k / half;
        double sd, cd;
        double inv = (double)inv_freq[i];
        if (ntk_x != 1.0) inv *= pow(ntk_x, -2.0 * (double)i / (double)(head_dim - 2));
        sincos(p * inv, &sd, &cd);
        const float c = (float)cd * attn_factor, s = (float)sd * attn_factor;
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

#define KVPR_ROPE(SFX, D)                                                                          \
    extern "C" __global__ void __launch_bounds__(128)                                              \
        rope_##SFX(D::T* x, const unsigned* pos, const float* inv_freq, float attn_factor,         \
                   int rows, int row_stride, int n_heads, int head_dim, int interleaved,           \
                   float ntk_factor, int ntk_max_pos, int ntk_min_len) {                           \
        rope_body<D>(x, pos, inv_freq, attn_factor, rows, row_stride, n_heads, head_dim,           \
                     interleaved, ntk_factor, ntk_max_pos, ntk_min_len);                           \
    }
KVPR_FOR_EACH_DTYPE(KVPR_ROPE)
