// Token embedding lookup. Compiled after common.cuh (concatenated by the runtime; no #include).

// embedding_<dtype>(table, ids, out, rows, dim, vocab): out row r = table row ids[r] of
// table [vocab, dim]; an id >= vocab writes a row of zeros, except 0xFFFFFFFF, which leaves its
// out row untouched (a padded slot of a gather table). Also the paged cache's gather of
// whole blocks (rows of block_size * kv_dim elements), so a row can be long and there can be
// few of them: grid (ceil(dim/256) capped at 65535, rows capped at 65535), block 256, both
// dimensions loop (any grid covers everything); a warp copies consecutive elements.
template <class D>
__device__ __forceinline__ void embedding_body(const typename D::T* table, const unsigned* ids,
                                               typename D::T* out, int rows,
                                               unsigned long long dim, int vocab) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (int row = blockIdx.y; row < rows; row += gridDim.y) {
        const unsigned id = ids[row];
        if (id == 0xFFFFFFFFu) continue;
        typename D::T* o = out + (unsigned long long)row * dim;
        const bool zero = vocab <= 0 || id >= (unsigned)vocab;
        const typename D::T* t = table + (zero ? 0ull : (unsigned long long)id * dim);
        for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
             i < dim; i += stride) {
            o[i] = zero ? D::store(0.0f) : t[i];
        }
    }
}

#define KVPR_EMBEDDING(SFX, D)                                                               \
    extern "C" __global__ void __launch_bounds__(256) embedding_##SFX(                       \
        const D::T* table, const unsigned* ids, D::T* out, int rows, unsigned long long dim,  \
        int vocab) {                                                                         \
        embedding_body<D>(table, ids, out, rows, dim, vocab);                                \
    }
KVPR_FOR_EACH_DTYPE(KVPR_EMBEDDING)
