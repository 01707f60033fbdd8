// Token selection: greedy arg-max and seeded top-k / top-p sampling. Compiled after common.cuh
// (concatenated by the runtime; no #include).

// argmax_<dtype>(x, out, rows, cols): out[r] = the first index of the largest value of row r
// (NaN never wins, ties go to the smallest index; a row of only NaN gives 0).
// grid (rows), block 256: threads stride over the row, then a block arg-max reduction.
template <class D>
__device__ __forceinline__ void argmax_body(const typename D::T* x, unsigned* out, int rows,
                                            int cols) {
    __shared__ float sv[32];
    __shared__ unsigned si[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const typename D::T* xr = x + (unsigned long long)row * cols;
    float bv = KVPR_NEG_INF;
    unsigned bi = 0xffffffffu;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        const float v = D::load(xr[j]);
        if (argmax_beats(v, (unsigned)j, bv, bi)) {
            bv = v;
            bi = (unsigned)j;
        }
    }
    const unsigned win = block_argmax(bv, bi, sv, si);
    if (threadIdx.x == 0) out[row] = win == 0xffffffffu ? 0u : win;
}

// splitmix64's finaliser.
__device__ __forceinline__ unsigned long long kvpr_mix64(unsigned long long x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 31;
    return x;
}

// Gumbel noise g = -log(-log(u)) for (seed, step, row, col), u uniform in (0, 1) from 24 hash bits.
__device__ __forceinline__ float kvpr_gumbel(unsigned long long seed, unsigned long long step,
                                             unsigned long long row, unsigned long long col) {
    const unsigned long long h = kvpr_mix64(seed ^ (step * 0x9E3779B97F4A7C15ull) ^
                                            (row * 0xC2B2AE3D27D4EB4Full) ^
                                            (col * 0x165667B19E3779F9ull));
    const float u = ((float)(h >> 40) + 0.5f) * (1.0f / 16777216.0f);
    return -logf(-logf(u));
}

// sample_<dtype>(logits, work, out, rows, cols, inv_temperature, top_k, top_p, seed, step).
// grid (rows), block 256; work is rows*cols floats of scratch. Per row r:
//   z_j = logits[j] * inv_temperature, m = max z, p_j = exp(z_j - m) (stored in work; max p = 1).
//   t_k = (0 < top_k < cols) ? the largest t with count(p_j >= t) >= top_k : 0
//   t_p = (top_p < 1) ? the largest t with sum_{p_j >= t} p_j >= top_p * sum_j p_j : 0
//   both found by bisection over float bit patterns in [0, 0x3f800001);
//   out[r] = argmax over { j : p_j >= max(t_k, t_p) } of z_j + gumbel(seed, step, r, j)
//   (ties to the smallest j).
// Every block reduction broadcasts one bit-identical value, so all threads take the same branches.
template <class D>
__device__ __forceinline__ void sample_body(const typename D::T* logits, float* work,
                                            unsigned* out, int rows, int cols,
                                            float inv_temperature, int top_k, float top_p,
                                            unsigned long long seed, unsigned long long step) {
    __shared__ float sf[32];
    __shared__ unsigned su[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const typename D::T* lr = logits + (unsigned long long)row * cols;
    float* p = work + (unsigned long long)row * cols;

    float zmax = KVPR_NEG_INF;
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        zmax = fmaxf(zmax, D::load(lr[j]) * inv_temperature);
    const float m = block_max(zmax, sf);
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        p[j] = expf(D::load(lr[j]) * inv_temperature - m);
    __syncthreads();

    float t_k = 0.0f;
    if (top_k > 0 && top_k < cols) {
        unsigned lo = 0u, hi = 0x3f800001u;  // pred(lo) holds, pred(hi) does not
        while (hi - lo > 1u) {
            const unsigned mid = lo + (hi - lo) / 2u;
            const float t = __uint_as_float(mid);
            unsigned cnt = 0u;
            for (int j = threadIdx.x; j < cols; j += blockDim.x) cnt += p[j] >= t ? 1u : 0u;
            if (block_sum(cnt, su) >= (unsigned)top_k)
                lo = mid;
            else
                hi = mid;
        }
        t_k = __uint_as_float(lo);
    }

    float t_p = 0.0f;
    if (top_p < 1.0f) {
        float z = 0.0f;
        for (int j = threadIdx.x; j < cols; j += blockDim.x) z += p[j];
        const float target = top_p * block_sum(z, sf);
        unsigned lo = 0u, hi = 0x3f800001u;
        while (hi - lo > 1u) {
            const unsigned mid = lo + (hi - lo) / 2u;
            const float t = __uint_as_float(mid);
            float mass = 0.0f;
            for (int j = threadIdx.x; j < cols; j += blockDim.x) {
                const float pj = p[j];
                if (pj >= t) mass += pj;
            }
            if (block_sum(mass, sf) >= target)
                lo = mid;
            else
                hi = mid;
        }
        t_p = __uint_as_float(lo);
    }

    const float t = fmaxf(t_k, t_p);
    float bv = KVPR_NEG_INF;
    unsigned bi = 0xffffffffu;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        if (p[j] >= t) {
            const float g = kvpr_gumbel(seed, step, (unsigned long long)row, (unsigned long long)j);
            const float key = D::load(lr[j]) * inv_temperature + g;
            if (argmax_beats(key, (unsigned)j, bv, bi)) {
                bv = key;
                bi = (unsigned)j;
            }
        }
    }
    const unsigned win = block_argmax(bv, bi, sf, su);
    if (threadIdx.x == 0) out[row] = win == 0xffffffffu ? 0u : win;
}

#define KVPR_SAMPLE(SFX, D)                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                            \
        argmax_##SFX(const D::T* x, unsigned* out, int rows, int cols) {                         \
        argmax_body<D>(x, out, rows, cols);                                                      \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(256) sample_##SFX(                              \
        const D::T* logits, float* work, unsigned* out, int rows, int cols,                      \
        float inv_temperature, int top_k, float top_p, unsigned long long seed,                  \
        unsigned long long step) {                                                               \
        sample_body<D>(logits, work, out, rows, cols, inv_temperature, top_k, top_p, seed, step); \
    }
KVPR_FOR_EACH_DTYPE(KVPR_SAMPLE)
