// Token embedding lookup. Compiled after common.cuh (concatenated by the runtime; no #include).

// embedding_<dtype>(table, ids, out, rows, dim, vocab): out row r = table row ids[r] of
// table [vocab, dim]; an id >= vocab writes a row of zeros.
// grid (rows), block 256: one block per row, threads stride over dim (coalesced copy).
template <class D>
__device__ __forceinline__ void embedding_body(const typename D::T* table, const unsigned* ids,
                                               typename D::T* out, int rows, int dim, int vocab) {
    const int row = blockIdx.x;
    if (row >= rows) return;
    const unsigned id = ids[row];
    typename D::T* o = out + (unsigned long long)row * dim;
    if (vocab <= 0 || id >= (unsigned)vocab) {
        for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = D::store(0.0f);
        return;
    }
    const typename D::T* t = table + (unsigned long long)id * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = t[i];
}

#define KVPR_EMBEDDING(SFX, D)                                                               \
    extern "C" __global__ void __launch_bounds__(256) embedding_##SFX(                       \
        const D::T* table, const unsigned* ids, D::T* out, int rows, int dim, int vocab) {   \
        embedding_body<D>(table, ids, out, rows, dim, vocab);                                \
    }
KVPR_FOR_EACH_DTYPE(KVPR_EMBEDDING)
