// Decode attention, flash-decoding style: the context is cut into splits, attn_split computes an
// unnormalised partial result per (split, head, query row), attn_combine merges the splits.
// Compiled after common.cuh (concatenated by the runtime; no #include).
//
// Layouts: q and out [batch, q_len, n_heads*head_dim]; k, v [batch, kv_cap, n_kv_heads*head_dim].
// Query row `row = b*q_len + j` sits at position q_pos0 + j and attends causally to keys
// 0 .. n with n = q_pos0 + j + 1; or, for a ragged batch (`lens` not null, q_len = 1, q_pos0
// unused), row b attends keys 0 .. n with n = min(lens[b], kv_cap), and a row with no key writes
// zeros. A sliding window (window > 0) keeps only the last `window` of those keys,
// max(0, n - window) .. n (the host passes 0 for a window at least kv_cap long).
// Grouped-query heads: head h reads kv head h / (n_heads / n_kv_heads).
// The launch covers splits split0 .. split0 + n_splits (the host skips the splits before the
// first key its queries see); block `slot` = blockIdx.x works on split s = split0 + slot, and its
// partial is number `slot`. Partials, for part = (row*n_heads + h)*n_splits + slot:
//   part_o[part*head_dim + d] = sum_t exp(score_t - m_s) * v_t[d]
//   part_ml[part*2 + 0] = m_s = max_t score_t
//   part_ml[part*2 + 1] = l_s = sum_t exp(score_t - m_s)
// with score_t = scale * dot(q, k_t) in f32; an empty split writes m = -inf, l = 0, o = 0.

#define ATTN_THREADS 128
#define ATTN_WARPS (ATTN_THREADS / KVPR_WARP)
#define ATTN_MAX_HEAD_DIM 256
// A lane holds 2 adjacent dims of every 64-dim chunk: dims 2*lane + 64*c and +1, c < ATTN_CHUNKS.
#define ATTN_CHUNKS (ATTN_MAX_HEAD_DIM / (2 * KVPR_WARP))
// Keys a warp works on at once (see attn_split_body's main loop).
#define ATTN_UNROLL 4

// attn_split_<dtype>: grid (n_splits, n_heads, batch*q_len), block 128 (4 warps).
// Split s covers keys [max(s*split_len, lo), min((s+1)*split_len, n)), with lo .. n the query's
// keys as above: a ragged launch is sized for kv_cap keys, so the splits past a shorter row's keys
// are empty, and so are the splits before a query's window (the block returns at once); the first
// split a window reaches is masked by `start`. Warp w takes keys start + w, start + w + 4, ...,
// ATTN_UNROLL of them at a time: per key the warp computes the dot product
// (each lane 2 dims per 64-dim chunk, coalesced, then a shuffle all-reduce), and keeps an online
// softmax (running max m, sum l and the rescaled sum of v in registers, head_dim <= 256). The 4
// warps then merge their (m, l, o) through 4 KiB of shared memory and the block writes the
// split's partial. 60-71 registers, no spills, 4.1 KiB static shared memory (sm_80 / sm_90).
template <class D>
__device__ __forceinline__ void attn_split_body(const typename D::T* q, const typename D::T* k,
                                                const typename D::T* v, const unsigned* lens,
                                                float* part_o,
                                                float* part_ml, int batch, int q_len, int q_pos0,
                                                int n_heads, int n_kv_heads, int head_dim,
                                                int kv_cap, int window, float scale,
                                                int split_len, int split0, int n_splits) {
    __shared__ float s_o[ATTN_WARPS][ATTN_MAX_HEAD_DIM];
    __shared__ float s_m[ATTN_WARPS], s_l[ATTN_WARPS];

    const int slot = blockIdx.x, h = blockIdx.y, row = blockIdx.z;
    if (slot >= n_splits || h >= n_heads || row >= batch * q_len) return;
    const int b = row / q_len, j = row - b * q_len;
    int n_keys = q_pos0 + j + 1;
    if (lens) n_keys = lens[b] < (unsigned)kv_cap ? (int)lens[b] : kv_cap;
    const int lo = window > 0 ? max(0, n_keys - window) : 0;
    const int s = split0 + slot;
    const int start = max(s * split_len, lo);
    const int end = min(s * split_len + split_len, n_keys);

    const unsigned long long part =
        ((unsigned long long)row * n_heads + h) * (unsigned long long)n_splits + slot;
    float* po = part_o + part * head_dim;
    float* pml = part_ml + part * 2;

    if (start >= end) {
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) po[d] = 0.0f;
        if (threadIdx.x == 0) {
            pml[0] = KVPR_NEG_INF;
            pml[1] = 0.0f;
        }
        return;
    }

    const int lane = threadIdx.x % KVPR_WARP, warp = threadIdx.x / KVPR_WARP;
    const int kv_h = h / (n_heads / n_kv_heads);
    const unsigned long long q_row = (unsigned long long)n_heads * head_dim;
    const unsigned long long kv_row = (unsigned long long)n_kv_heads * head_dim;
    const typename D::T* qh = q + row * q_row + h * head_dim;
    const unsigned long long kv_base = (unsigned long long)b * kv_cap * kv_row + kv_h * head_dim;
    const typename D::T* kb = k + kv_base;
    const typename D::T* vb = v + kv_base;

    float qr[2 * ATTN_CHUNKS], acc[2 * ATTN_CHUNKS];
#pragma unroll
    for (int c = 0; c < ATTN_CHUNKS; ++c) {
        const int d = 2 * lane + 2 * KVPR_WARP * c;
        const bool in = d < head_dim;
        qr[2 * c] = in ? D::load(qh[d]) : 0.0f;
        qr[2 * c + 1] = in ? D::load(qh[d + 1]) : 0.0f;
        acc[2 * c] = 0.0f;
        acc[2 * c + 1] = 0.0f;
    }

    // Each iteration a warp takes ATTN_UNROLL keys (t0, t0 + 4, ...): the K loads of all of them
    // are issued before the first shuffle reduction, and their V loads are independent, so several
    // keys' loads are in flight at once. Keys past `end` score -inf (weight 0) and are not loaded.
    float m = KVPR_NEG_INF, l = 0.0f;
    for (int t0 = start + warp; t0 < end; t0 += ATTN_WARPS * ATTN_UNROLL) {
        float sc[ATTN_UNROLL];
#pragma unroll
        for (int u = 0; u < ATTN_UNROLL; ++u) {
            const int t = t0 + u * ATTN_WARPS;
            const typename D::T* kt = kb + (unsigned long long)t * kv_row;
            float dot = 0.0f;
#pragma unroll
            for (int c = 0; c < ATTN_CHUNKS; ++c) {
                const int d = 2 * lane + 2 * KVPR_WARP * c;
                if (t < end && d < head_dim)
                    dot += qr[2 * c] * D::load(kt[d]) + qr[2 * c + 1] * D::load(kt[d + 1]);
            }
            sc[u] = dot;
        }
        float m_new = m;
#pragma unroll
        for (int u = 0; u < ATTN_UNROLL; ++u) {
            const float score = scale * warp_sum(sc[u]);
            sc[u] = t0 + u * ATTN_WARPS < end ? score : KVPR_NEG_INF;
            m_new = fmaxf(m_new, sc[u]);
        }
        // m_new is finite (key t0 < end is valid); corr is 0 on the first keys (m = -inf).
        const float corr = expf(m - m_new);
        l *= corr;
#pragma unroll
        for (int c = 0; c < 2 * ATTN_CHUNKS; ++c) acc[c] *= corr;
#pragma unroll
        for (int u = 0; u < ATTN_UNROLL; ++u) {
            const int t = t0 + u * ATTN_WARPS;
            const float p = expf(sc[u] - m_new);  // 0 for keys past `end`
            l += p;
            const typename D::T* vt = vb + (unsigned long long)t * kv_row;
#pragma unroll
            for (int c = 0; c < ATTN_CHUNKS; ++c) {
                const int d = 2 * lane + 2 * KVPR_WARP * c;
                if (t < end && d < head_dim) {
                    acc[2 * c] += p * D::load(vt[d]);
                    acc[2 * c + 1] += p * D::load(vt[d + 1]);
                }
            }
        }
        m = m_new;
    }

    // Merge the warps: a warp without keys has m = -inf, l = 0, o = 0 and weight 0; warp 0 always
    // has the split's first key, so the block maximum is finite.
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int c = 0; c < ATTN_CHUNKS; ++c) {
        const int d = 2 * lane + 2 * KVPR_WARP * c;
        if (d < head_dim) {
            s_o[warp][d] = acc[2 * c];
            s_o[warp][d + 1] = acc[2 * c + 1];
        }
    }
    __syncthreads();

    float m_blk = KVPR_NEG_INF;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; ++w) m_blk = fmaxf(m_blk, s_m[w]);
    float wgt[ATTN_WARPS];
    float l_blk = 0.0f;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; ++w) {
        wgt[w] = s_m[w] == KVPR_NEG_INF ? 0.0f : expf(s_m[w] - m_blk);
        l_blk += s_l[w] * wgt[w];
    }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; ++w) o += s_o[w][d] * wgt[w];
        po[d] = o;
    }
    if (threadIdx.x == 0) {
        pml[0] = m_blk;
        pml[1] = l_blk;
    }
}

// attn_combine_<dtype>: grid (n_heads, rows = batch*q_len), block 128; threads stride over
// head_dim. M = max_s m_s, L = sum_s l_s*exp(m_s - M), out = sum_s part_o_s*exp(m_s - M) / L.
// Empty splits (m_s = -inf) weigh 0; a row with no key at all (a ragged length 0) writes 0.
template <class D>
__device__ __forceinline__ void attn_combine_body(const float* part_o, const float* part_ml,
                                                  typename D::T* out, int rows, int n_heads,
                                                  int head_dim, int n_splits) {
    const int h = blockIdx.x, row = blockIdx.y;
    if (h >= n_heads || row >= rows) return;
    const unsigned long long base = ((unsigned long long)row * n_heads + h) * n_splits;
    const float* ml = part_ml + base * 2;

    float m_all = KVPR_NEG_INF;
    for (int s = 0; s < n_splits; ++s) m_all = fmaxf(m_all, ml[2 * s]);
    float l_all = 0.0f;
    for (int s = 0; s < n_splits; ++s) {
        const float m_s = ml[2 * s];
        if (m_s != KVPR_NEG_INF) l_all += ml[2 * s + 1] * expf(m_s - m_all);
    }

    typename D::T* o = out + (unsigned long long)row * n_heads * head_dim + h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < n_splits; ++s) {
            const float m_s = ml[2 * s];
            if (m_s != KVPR_NEG_INF) acc += part_o[(base + s) * head_dim + d] * expf(m_s - m_all);
        }
        o[d] = D::store(l_all > 0.0f ? acc / l_all : 0.0f);
    }
}

#define KVPR_ATTN(SFX, D)                                                                       \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS) attn_split_##SFX(                \
        const D::T* q, const D::T* k, const D::T* v, const unsigned* lens, float* part_o,      \
        float* part_ml, int batch, int q_len, int q_pos0, int n_heads, int n_kv_heads,          \
        int head_dim, int kv_cap, int window, float scale, int split_len, int split0,           \
        int n_splits) {                                                                         \
        attn_split_body<D>(q, k, v, lens, part_o, part_ml, batch, q_len, q_pos0, n_heads,       \
                           n_kv_heads, head_dim, kv_cap, window, scale, split_len, split0,      \
                           n_splits);                                                           \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS)                                  \
        attn_combine_##SFX(const float* part_o, const float* part_ml, D::T* out, int rows,      \
                           int n_heads, int head_dim, int n_splits) {                           \
        attn_combine_body<D>(part_o, part_ml, out, rows, n_heads, head_dim, n_splits);          \
    }
KVPR_FOR_EACH_DTYPE(KVPR_ATTN)
