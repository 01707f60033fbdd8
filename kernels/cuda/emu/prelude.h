// A single-threaded CUDA emulator for kvpr's kernels, so that CI runs the real CUDA C on a CPU
// (kernels/src/cuda/emulated.rs builds it with the system C++ compiler and holds every kernel to
// its twin). Every CUDA thread of a block is a ucontext coroutine; __syncthreads and warp shuffles
// are barriers that yield to a round-robin scheduler. Blocks run one after another, so __shared__
// becomes `static`. The f16/bf16 conversions the kernels do with inline PTX are swapped for the
// host's own (emu_h2f, emu_f2h, emu_f2bf) by the Rust side before compiling.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <math.h>
#include <string.h>
#include <stdlib.h>
#include <stdio.h>
#include <ucontext.h>
#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>
using std::min;
using std::max;

struct emu_dim3 { unsigned x, y, z; };
static emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
static inline float emu_h2f(unsigned short h) { _Float16 x; memcpy(&x, &h, 2); return (float)x; }
static inline unsigned short emu_f2h(float f) { _Float16 x = (_Float16)f; unsigned short h; memcpy(&h, &x, 2); return h; }
static inline unsigned short emu_f2bf(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// ---- scheduler ----
struct EmuBlock {
    int n = 0, cur = 0;
    ucontext_t sched;
    std::vector<ucontext_t> ctx;
    std::vector<int> done;
    int b_arrived = 0, b_gen = 0;
    int w_arrived[32] = {0}, w_gen[32] = {0};
    unsigned long long slot[1024];
};
static EmuBlock* emu;
static inline void emu_yield() { swapcontext(&emu->ctx[emu->cur], &emu->sched); }
static inline void __syncthreads() {
    int g = emu->b_gen;
    if (++emu->b_arrived == emu->n) { emu->b_arrived = 0; emu->b_gen++; }
    else while (emu->b_gen == g) emu_yield();
}
static inline void emu_warp_barrier() {
    int w = threadIdx.x / 32, g = emu->w_gen[w];
    int lanes = std::min(32, emu->n - w * 32);
    if (++emu->w_arrived[w] == lanes) { emu->w_arrived[w] = 0; emu->w_gen[w]++; }
    else while (emu->w_gen[w] == g) emu_yield();
}
template <class V>
static inline V __shfl_xor_sync(unsigned, V v, int o) {
    unsigned long long bits = 0;
    memcpy(&bits, &v, sizeof(V));
    emu->slot[threadIdx.x] = bits;
    emu_warp_barrier();
    unsigned long long r = emu->slot[(threadIdx.x & ~31u) | ((threadIdx.x & 31u) ^ (unsigned)o)];
    emu_warp_barrier();
    V out;
    memcpy(&out, &r, sizeof(V));
    return out;
}

static void (*emu_body)(void*);
static void* emu_body_arg;
static void emu_entry(int i) {
    emu_body(emu_body_arg);
    emu->done[i] = 1;
}

template <class... A, size_t... I>
static void emu_call(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*(A*)args[I]...);
}

template <class... A>
static void emu_launch(void (*k)(A...), int gx, int gy, int gz, int bx, void** args) {
    struct Ctx { void (*k)(A...); void** args; } c{k, args};
    emu_body = [](void* p) { Ctx* c = (Ctx*)p; emu_call(c->k, c->args, std::index_sequence_for<A...>{}); };
    emu_body_arg = &c;
    gridDim = {(unsigned)gx, (unsigned)gy, (unsigned)gz};
    blockDim = {(unsigned)bx, 1, 1};
    EmuBlock blk;
    emu = &blk;
    blk.n = bx;
    blk.ctx.resize(bx);
    static std::vector<std::vector<char>> stacks;  // reused across launches
    if ((int)stacks.size() < bx) stacks.resize(bx, std::vector<char>(1 << 16));
    for (int z = 0; z < gz; ++z) for (int y = 0; y < gy; ++y) for (int x = 0; x < gx; ++x) {
        blockIdx = {(unsigned)x, (unsigned)y, (unsigned)z};
        blk.done.assign(bx, 0);
        blk.b_arrived = 0;
        for (int i = 0; i < bx; ++i) {
            getcontext(&blk.ctx[i]);
            blk.ctx[i].uc_stack.ss_sp = stacks[i].data();
            blk.ctx[i].uc_stack.ss_size = stacks[i].size();
            blk.ctx[i].uc_link = &blk.sched;
            makecontext(&blk.ctx[i], (void (*)())emu_entry, 1, i);
        }
        for (;;) {
            bool any = false;
            for (int i = 0; i < bx; ++i) {
                if (blk.done[i]) continue;
                any = true;
                blk.cur = i;
                threadIdx = {(unsigned)i, 0, 0};
                swapcontext(&blk.sched, &blk.ctx[i]);
            }
            if (!any) break;
        }
    }
    emu = nullptr;
}
