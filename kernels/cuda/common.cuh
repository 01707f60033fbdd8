// kvpr CUDA kernels: shared definitions.
//
// The runtime compiles ONE translation unit with NVRTC: this file followed by norm.cu, rope.cu,
// attention.cu, elementwise.cu, embedding.cu and sample.cu, concatenated in that order by the
// CUDA backend (kernels/src/cuda). So the .cu files do not include this file, and nothing here
// may be redefined there. No CUDA headers are used at all: f16 and bf16 are stored as
// `unsigned short` and converted with inline PTX (sm_80+). All arithmetic is in f32.
//
// Every kernel is written once as a `__device__` template over a dtype tag (DtF32, DtF16, DtBF16)
// and exported as three `extern "C" __global__` functions NAME_f32, NAME_f16 and NAME_bf16 by a
// per-kernel macro applied with KVPR_FOR_EACH_DTYPE.

#define KVPR_NEG_INF __int_as_float(0xff800000)
#define KVPR_WARP 32
#define KVPR_FULL_MASK 0xffffffffu

// ---- dtypes: storage type T, load (T -> f32) and store (f32 -> T) ----

struct DtF32 {
    typedef float T;
    static __device__ __forceinline__ float load(float v) { return v; }
    static __device__ __forceinline__ float store(float v) { return v; }
};

struct DtF16 {
    typedef unsigned short T;
    static __device__ __forceinline__ float load(unsigned short h) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
        return f;
    }
    static __device__ __forceinline__ unsigned short store(float f) {
        unsigned short h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
        return h;
    }
};

struct DtBF16 {
    typedef unsigned short T;
    static __device__ __forceinline__ float load(unsigned short b) {
        return __uint_as_float(((unsigned)b) << 16);
    }
    static __device__ __forceinline__ unsigned short store(float f) {
        unsigned short b;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(f));
        return b;
    }
};

// M(suffix, dtype tag) for each exported dtype.
#define KVPR_FOR_EACH_DTYPE(M) M(f32, DtF32) M(f16, DtF16) M(bf16, DtBF16)

// ---- warp and block reductions ----
// Block reductions need blockDim.x a multiple of 32 (every launch here is 128 or 256 threads),
// are called by every thread of the block, and return the same value to every thread: each warp
// reduces the per-warp partials itself, in the same order, so all threads see bit-identical
// results. `scratch` is a __shared__ array of 32 elements, reusable right after the call.

template <class V>
__device__ __forceinline__ V warp_sum(V v) {
#pragma unroll
    for (int o = KVPR_WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(KVPR_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = KVPR_WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(KVPR_FULL_MASK, v, o));
    return v;
}

template <class V>
__device__ __forceinline__ V block_sum(V v, V* scratch) {
    const int lane = threadIdx.x % KVPR_WARP, warp = threadIdx.x / KVPR_WARP;
    const int n_warps = blockDim.x / KVPR_WARP;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    V t = lane < n_warps ? scratch[lane] : V(0);
    t = warp_sum(t);
    __syncthreads();
    return t;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x % KVPR_WARP, warp = threadIdx.x / KVPR_WARP;
    const int n_warps = blockDim.x / KVPR_WARP;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < n_warps ? scratch[lane] : KVPR_NEG_INF;
    t = warp_max(t);
    __syncthreads();
    return t;
}

// Arg-max candidate (value, index). `b` beats `a` when it is larger, or equal with a smaller index;
// NaN never beats anything (both comparisons are false). The empty candidate is (-inf, 0xffffffff),
// which any non-NaN value at a real index beats.
__device__ __forceinline__ bool argmax_beats(float bv, unsigned bi, float av, unsigned ai) {
    return bv > av || (bv == av && bi < ai);
}

__device__ __forceinline__ void warp_argmax(float& v, unsigned& i) {
#pragma unroll
    for (int o = KVPR_WARP / 2; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(KVPR_FULL_MASK, v, o);
        const unsigned oi = __shfl_xor_sync(KVPR_FULL_MASK, i, o);
        if (argmax_beats(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
}

// Block arg-max of (v, i); returns the winning index to every thread (0xffffffff if none won).
__device__ __forceinline__ unsigned block_argmax(float v, unsigned i, float* sv, unsigned* si) {
    const int lane = threadIdx.x % KVPR_WARP, warp = threadIdx.x / KVPR_WARP;
    const int n_warps = blockDim.x / KVPR_WARP;
    warp_argmax(v, i);
    if (lane == 0) {
        sv[warp] = v;
        si[warp] = i;
    }
    __syncthreads();
    float tv = KVPR_NEG_INF;
    unsigned ti = 0xffffffffu;
    if (lane < n_warps) {
        tv = sv[lane];
        ti = si[lane];
    }
    warp_argmax(tv, ti);
    __syncthreads();
    return ti;
}
