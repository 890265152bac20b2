// Weight-streaming GEMV for a handful of tokens (decode at batch 1-4).
//
// With 1-4 tokens every projection is y[b, n] = W[n, :] . x[b, :] and the only cost that matters
// is reading W from HBM once, at ~3 TB/s if enough bytes are in flight on every SM. In a batch-1
// decode step on an H100, cuBLAS's small-M kernels read the mixers' weights at ~1.8 TB/s and the
// grouped MoE GEMM (16-row tiles made for 16+ tokens) at ~2.2 TB/s: its 224 / 128 blocks of
// 256 KB each fill 132 SMs unevenly. Here one warp owns one output column (one weight row, two
// for gate and up): every lane issues GV_U 16-byte loads per row before its first FMA (gemv.cuh's
// dot_rows), and a block is only GV_WARPS columns, so thousands of small blocks spread evenly
// over the SMs.
//
// Kernels (T = bf16 or float storage; products and sums in fp32, one rounding to T per output,
// as cuBLAS and the grouped GEMM's epilogues in moe_stream.cu do):
//   gemv_<sfx>(x, ldx, W, y, ldy, N, K, nb)        y[b, n] = W[n] . x[b] for b < nb <= GV_MAXB;
//   gemv_bf16_f32out(...)                          the same with fp32 y (the LM head's logits);
//   moe_gemv_gateup_<sfx>(h, w13, act, idx, topk, N, K)
//       pair p = blockIdx.y of token t = p / topk and expert e = idx[p] (idx null: e = 0, the dense
//       FFN): act[p, n] = silu(w13[e, n] . h[t]) * (w13[e, N + n] . h[t]), w13 [E, 2N, K];
//   moe_gemv_down_<sfx>(act, w2, ys, idx, wts, N, K)   ys[p, n] = wts[p] * (w2[e, n] . act[p]);
//   conv_in_step_<sfx>(h, w_in, conv_w, state, y, H, L, nb)   ShortConv in_proj + decode step, nb <= 2.
// The MoE router's kernels, the out_proj with the router folded through it among them, are
// router.cu's. Every row (W, x, act, h) must start 16-byte aligned with K a multiple of
// 16 / sizeof(T): the launchers in gemv.py check it.
#include "gemv.cuh"

template <typename T>
__device__ void moe_gemv_gateup(const T* h, const T* w13, T* act, const int* idx, int topk, int N, int K)
{
    const int lane = threadIdx.x & 31, n = blockIdx.x * GV_WARPS + (threadIdx.x >> 5), p = blockIdx.y;
    if (n >= N) return;
    pdl_wait();  // idx comes from the kernel right before (the router)
    pdl_trigger();
    const T* We = w13 + (size_t)(idx ? idx[p] : 0) * 2 * N * K;
    const T* w[2] = {We + (size_t)n * K, We + (size_t)(N + n) * K};
    float acc[2][1] = {};
    dot_rows<T, 2, 1, true>(w, h + (size_t)(p / topk) * K, K, K, lane, acc);
    const float g = warp_sum(acc[0][0]), u = warp_sum(acc[1][0]);
    if (lane == 0) act[(size_t)p * N + n] = from_f<T>(rnd<T>(rnd<T>(silu_f(rnd<T>(g))) * rnd<T>(u)));
}

template <typename T>
__device__ void moe_gemv_down(const T* act, const T* w2, T* ys, const int* idx, const float* wts, int N, int K)
{
    const int lane = threadIdx.x & 31, n = blockIdx.x * GV_WARPS + (threadIdx.x >> 5), p = blockIdx.y;
    if (n >= N) return;
    // idx is read before dot_rows' pdl_wait: the router that wrote it ran two kernels ago, and the
    // gate/up GEMV between let this kernel start only after its own wait, i.e. after the router ended.
    const T* w[1] = {w2 + ((size_t)idx[p] * N + n) * K};
    float acc[1][1] = {};
    dot_rows<T, 1, 1, true>(w, act + (size_t)p * K, K, K, lane, acc);
    const float s = warp_sum(acc[0][0]);
    if (lane == 0) ys[(size_t)p * N + n] = from_f<T>(rnd<T>(s) * rnd<T>(wts[p]));
}

// ShortConv's in_proj fused with its decode step (decode.cu's conv_step): a warp owns channel c, so
// it computes the B, C and x rows (c, H + c, 2H + c of w_in) for each token and then the causal
// conv of its state column; bcx never goes to memory and one launch per layer disappears. Same
// roundings as in_proj (to T) followed by conv_step. Three rows in flight per warp need ~140
// registers; __launch_bounds__(256, 2) caps them at 128 (a few bytes spill) so that two blocks
// share an SM: batch-1 decode 1.717 -> 1.690 ms per step on an H100.
template <typename T, int NB>
__device__ void conv_in_step(const T* h, const T* w_in, const T* conv_w, T* state, T* y, int H, int L)
{
    const int lane = threadIdx.x & 31, c = blockIdx.x * GV_WARPS + (threadIdx.x >> 5);
    if (c >= H) return;
    const T* w[3] = {w_in + (size_t)c * H, w_in + (size_t)(H + c) * H, w_in + (size_t)(2 * H + c) * H};
    float acc[3][NB] = {};
    dot_rows<T, 3, NB, true>(w, h, H, H, lane, acc);
#pragma unroll
    for (int b = 0; b < NB; ++b) {
        const float bv = rnd<T>(warp_sum(acc[0][b])), cv = rnd<T>(warp_sum(acc[1][b]));
        const float xv = rnd<T>(warp_sum(acc[2][b]));
        if (lane == 0)
            conv_step_channel<T>(bv, cv, xv, conv_w, state + (size_t)b * (L - 1) * H + c, y + (size_t)b * H + c, c,
                                 H, L);
    }
}

// ----- unmangled instantiations ---------------------------------------------------------------------
#define GEMV_KERNEL(NAME, T, O)                                                                                 \
    extern "C" __global__ void __launch_bounds__(GV_WARPS * 32)                                                 \
        NAME(const T* x, int ldx, const T* W, O* y, int ldy, int N, int K, int nb)                              \
    {                                                                                                           \
        switch (nb) { /* uniform per launch; the host keeps 1 <= nb <= GV_MAXB */                              \
        case 1: gemv<T, O, 1>(x, ldx, W, y, ldy, N, K); break;                                                  \
        case 2: gemv<T, O, 2>(x, ldx, W, y, ldy, N, K); break;                                                  \
        case 3: gemv<T, O, 3>(x, ldx, W, y, ldy, N, K); break;                                                  \
        case 4: gemv<T, O, 4>(x, ldx, W, y, ldy, N, K); break;                                                  \
        }                                                                                                       \
    }

#define MOE_GEMV_KERNELS(SUF, T)                                                                                \
    extern "C" __global__ void __launch_bounds__(GV_WARPS * 32)                                                 \
        moe_gemv_gateup_##SUF(const T* h, const T* w13, T* act, const int* idx, int topk, int N, int K)         \
    { moe_gemv_gateup<T>(h, w13, act, idx, topk, N, K); }                                                       \
    extern "C" __global__ void __launch_bounds__(GV_WARPS * 32)                                                 \
        moe_gemv_down_##SUF(const T* act, const T* w2, T* ys, const int* idx, const float* wts, int N, int K)   \
    { moe_gemv_down<T>(act, w2, ys, idx, wts, N, K); }

#define CONV_IN_STEP_KERNEL(SUF, T)                                                                             \
    extern "C" __global__ void __launch_bounds__(GV_WARPS * 32, 2) conv_in_step_##SUF(                           \
        const T* h, const T* w_in, const T* conv_w, T* state, T* y, int H, int L, int nb)                       \
    {                                                                                                           \
        switch (nb) {                                                                                           \
        case 1: conv_in_step<T, 1>(h, w_in, conv_w, state, y, H, L); break;                                     \
        case 2: conv_in_step<T, 2>(h, w_in, conv_w, state, y, H, L); break;                                     \
        }                                                                                                       \
    }

GEMV_KERNEL(gemv_bf16, bf16, bf16)
GEMV_KERNEL(gemv_bf16_f32out, bf16, float)
GEMV_KERNEL(gemv_f32, float, float)
MOE_GEMV_KERNELS(bf16, bf16)
MOE_GEMV_KERNELS(f32, float)
CONV_IN_STEP_KERNEL(bf16, bf16)
CONV_IN_STEP_KERNEL(f32, float)
