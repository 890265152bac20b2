// The weight-streaming dot products that gemv.cu's GEMVs and router.cu's folded router and
// router_topk share: one warp per weight row, the warp's lanes splitting K in 16-byte chunks.
#pragma once
#include "common.cuh"

#define GV_WARPS 8   // output columns (warps) per block
#define GV_U 8       // 16-byte chunks of one weight row each lane has in flight
#define GV_MAXB 4    // most tokens of one gemv launch

// acc += w . x over one 16-byte chunk of each
__device__ __forceinline__ void dot16(float& acc, const uint4& w, const uint4& x, bf16)
{
    const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&w);
    const __nv_bfloat162* xp = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 a = __bfloat1622float2(wp[i]), b = __bfloat1622float2(xp[i]);
        acc = fmaf(a.x, b.x, acc);
        acc = fmaf(a.y, b.y, acc);
    }
}
__device__ __forceinline__ void dot16(float& acc, const uint4& w, const uint4& x, float)
{
    acc = fmaf(__uint_as_float(w.x), __uint_as_float(x.x), acc);
    acc = fmaf(__uint_as_float(w.y), __uint_as_float(x.y), acc);
    acc = fmaf(__uint_as_float(w.z), __uint_as_float(x.z), acc);
    acc = fmaf(__uint_as_float(w.w), __uint_as_float(x.w), acc);
}

// acc[r][b] += (this lane's share of) w[r] . x[b], the warp's lanes splitting K in 16-byte chunks
// (lane l takes chunks l, l + 32, ...); the caller reduces over the warp. All R * GV_U weight loads
// of a pass are issued before the first FMA, and the first pass's before pdl_wait: launched with
// PDL, a GEMV streams its first weights while the kernel before it (which writes x) finishes.
// STREAM: weights read once (evict-first loads); else kept in cache (the router's, read by every
// token's block). x rows come through L1 (every warp of the block reads the same ones) with plain
// coherent loads, never the read-only path (see pdl_wait in common.cuh; __ldcg, straight from L2,
// measured ~0.3 ms slower per batch-1 step).
template <typename T, int R, int NB, bool STREAM>
__device__ __forceinline__ void dot_rows(const T* const (&w)[R], const T* x, size_t ldx, int K, int lane,
                                         float (&acc)[R][NB])
{
    constexpr int CH = 16 / sizeof(T);  // elements per chunk
    const int nch = K / CH;
    for (int base = 0; base < nch; base += 32 * GV_U) {
        uint4 wc[R][GV_U];
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int u = 0; u < GV_U; ++u) {
                const int c = base + u * 32 + lane;
                const uint4* src = reinterpret_cast<const uint4*>(w[r]) + (c < nch ? c : 0);
                const uint4 v = STREAM ? __ldcs(src) : __ldg(src);
                wc[r][u] = c < nch ? v : make_uint4(0, 0, 0, 0);
            }
        if (base == 0) {  // the first weights are in flight: now wait for the kernel that wrote x
            pdl_wait();
            pdl_trigger();
        }
#pragma unroll
        for (int u = 0; u < GV_U; ++u) {
            const int c = base + u * 32 + lane;
            if (c < nch) {
#pragma unroll
                for (int b = 0; b < NB; ++b) {
                    const uint4 xc = reinterpret_cast<const uint4*>(x + b * ldx)[c];  // coherent: see pdl_wait
#pragma unroll
                    for (int r = 0; r < R; ++r) dot16(acc[r][b], wc[r][u], xc, T());
                }
            }
        }
    }
}

template <typename T, typename O, int NB>
__device__ void gemv(const T* x, int ldx, const T* W, O* y, int ldy, int N, int K)
{
    const int lane = threadIdx.x & 31, n = blockIdx.x * GV_WARPS + (threadIdx.x >> 5);
    if (n >= N) return;
    const T* w[1] = {W + (size_t)n * K};
    float acc[1][NB] = {};
    dot_rows<T, 1, NB, true>(w, x, ldx, K, lane, acc);
#pragma unroll
    for (int b = 0; b < NB; ++b) {
        const float s = warp_sum(acc[0][b]);
        if (lane == 0) y[(size_t)b * ldy + n] = from_f<O>(s);
    }
}
