// The MoE router kernels of the small-batch path (decode at batch 1-64): ffn_norm, the fp32 router
// GEMV and the biased top-k (route.cuh) fused, so that the routing is one launch or none between
// the mixer and the experts. The router weight is 256 KB (E = 32 rows of H = 2048 fp32 columns):
// one block per token re-reads it from L2, so from 64 tokens on cuBLAS's GEMM is the better reader.
//
// Kernels (T = bf16 or float storage of y, w, h; x, the router and the logits are fp32):
//   router_topk(h32, gate, bias, H, E, k, norm_topk, scale, idx, wts)
//       one block per token: the E fp32 router logits into shared memory, then route_token's
//       biased top-k, replacing a cuBLAS GEMV (2 launches) and the route launch (H > 2048);
//   norm_route_<sfx>(x, y, w, h, eps, gate, bias, H, E, k, norm_topk, scale, idx, wts)
//       ffn_norm (one addend) and the router in one block per token (H <= 2048);
//   norm_route_sort_<sfx>(..., BM, sorted_pair, offsets, tiles, num_tiles, count)
//       the same, and the last block to finish sorts the pairs for the grouped GEMM (moe_sort.cuh);
//   norm_route_split_<sfx>(..., ntok, logits_g, count)   the same for 1-2 tokens over E / (H / 256) blocks;
//   gemv_out_router_<sfx>(a, lda, W, y, N, K, nb, M, Gw, x, r, E) + norm_route_folded_<sfx>(...)
//       the decode step's MoE router folded through the mixer's out_proj: the out_proj launch also
//       leaves the logits' partial sums, and one block norms, scales and routes.
// The GEMV parts (dot_rows, gemv) are gemv.cuh's; the launchers in router.py check shapes and
// 16-byte alignment.
#include "gemv.cuh"
#include "moe_sort.cuh"
#include "route.cuh"

#define RT_THREADS 1024  // a warp per expert: each logit is one 8 KB row, two passes

// h32 [ntok, H] fp32 (add_norm's unrounded copy), gate [E, H] fp32, E <= 64; grid = ntok blocks.
extern "C" __global__ void __launch_bounds__(RT_THREADS)
    router_topk(const float* h32, const float* gate, const float* bias, int H, int E, int k, int norm_topk,
                float scale, int* idx, float* wts)
{
    __shared__ float logits[64];
    const int t = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int e = warp; e < E; e += RT_THREADS / 32) {
        const float* w[1] = {gate + (size_t)e * H};
        float acc[1][1] = {};
        dot_rows<float, 1, 1, false>(w, h32 + (size_t)t * H, H, H, lane, acc);
        const float s = warp_sum(acc[0][0]);
        if (lane == 0) logits[e] = s;
    }
    __syncthreads();
    if (warp == 0)
        route_token<float>(logits, bias, E, k, norm_topk, scale, idx + (size_t)t * k, wts + (size_t)t * k, lane);
}

// The MoE layer's ffn_norm fused with its router (batch <= 64 tokens, H <= 2048): one block of
// H/2 threads per token does add_norm's work for one addend (x += y; h = rmsnorm(x) * w, the same
// roundings, the sum of squares in another order) keeping the fp32 row in shared memory, then a
// warp per expert dots it with the router row and warp 0 routes. Before pdl_wait every warp has
// the first pass of its first router row in flight. Replaces add_norm + router_topk: one launch
// and one dependent round trip fewer between the mixer and the experts on every MoE layer.
#define NR_MAX_H 2048
// Lane `lane`'s N float4 chunks of an fp32 router row from chunk `base` on (chunk base + u * 32 + lane,
// zeros past nch), and their dot product with the same chunks of the normed row h (shared memory).
template <int N>
__device__ __forceinline__ void load_row_f4(float4 (&dst)[N], const float4* row, int base, int nch, int lane)
{
#pragma unroll
    for (int u = 0; u < N; ++u) {
        const int c = base + u * 32 + lane;
        dst[u] = c < nch ? __ldg(row + c) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
}
template <int N>
__device__ __forceinline__ void fma_row_f4(float& acc, const float4 (&wc)[N], const float4* h, int base, int nch,
                                           int lane)
{
#pragma unroll
    for (int u = 0; u < N; ++u) {
        const int c = base + u * 32 + lane;
        if (c < nch) {
            const float4 hv = h[c];
            acc = fmaf(wc[u].x, hv.x, acc);
            acc = fmaf(wc[u].y, hv.y, acc);
            acc = fmaf(wc[u].z, hv.z, acc);
            acc = fmaf(wc[u].w, hv.w, acc);
        }
    }
}

template <typename T>
__device__ void norm_route(float* x, const T* y, const T* w, T* h, float eps, const float* gate, const float* bias,
                           int H, int E, int k, int norm_topk, float scale, int* idx, float* wts)
{
    __shared__ __align__(16) float row32[NR_MAX_H];
    __shared__ float partial[32], logits[64];
    const int t = blockIdx.x, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, nwarps = blockDim.x >> 5;
    const int nch = H / 4;  // float4 chunks of a router row
    const float4* gate4 = reinterpret_cast<const float4*>(gate);
    float4 pre[GV_U];
    load_row_f4(pre, gate4 + (size_t)min(warp, E - 1) * nch, 0, nch, lane);
    pdl_wait();
    pdl_trigger();

    const int c = 2 * tid;  // this thread's two columns
    float* xr = x + (size_t)t * H;
    const float2 xv = *reinterpret_cast<const float2*>(xr + c);
    const float v0 = xv.x + to_f<T>(y[(size_t)t * H + c]), v1 = xv.y + to_f<T>(y[(size_t)t * H + c + 1]);
    const float w0 = to_f<T>(w[c]), w1 = to_f<T>(w[c + 1]);
    const float rstd = rsqrtf(block_sum(v0 * v0 + v1 * v1, partial) / H + eps);
    *reinterpret_cast<float2*>(xr + c) = make_float2(v0, v1);
    h[(size_t)t * H + c] = from_f<T>(w0 * rnd<T>(v0 * rstd));
    h[(size_t)t * H + c + 1] = from_f<T>(w1 * rnd<T>(v1 * rstd));
    row32[c] = w0 * (v0 * rstd);
    row32[c + 1] = w1 * (v1 * rstd);
    __syncthreads();

    const float4* r4 = reinterpret_cast<const float4*>(row32);
    for (int e = warp; e < E; e += nwarps) {
        const float4* g = gate4 + (size_t)e * nch;
        float acc = 0.f;
        int base = 0;
        if (e == warp) {  // the prefetched first pass
            fma_row_f4(acc, pre, r4, 0, nch, lane);
            base = 32 * GV_U;
        }
        for (; base < nch; base += 32 * GV_U) {
            float4 wc[GV_U];
            load_row_f4(wc, g, base, nch, lane);
            fma_row_f4(acc, wc, r4, base, nch, lane);
        }
        const float s = warp_sum(acc);
        if (lane == 0) logits[e] = s;
    }
    __syncthreads();
    if (warp == 0)
        route_token<float>(logits, bias, E, k, norm_topk, scale, idx + (size_t)t * k, wts + (size_t)t * k, lane);
}

// norm_route, then the sort of the grouped GEMM (moe_sort) in the last block to finish: the blocks
// count themselves out (`count`, put back to 0 by the last), so the sort runs once every token is
// routed, without a launch of its own between the router and the experts' gate/up GEMM (measured
// together with the stream GEMMs' PDL, moe_stream.cu).
template <typename T>
__device__ void norm_route_sort(float* x, const T* y, const T* w, T* h, float eps, const float* gate,
                                const float* bias, int H, int E, int k, int norm_topk, float scale, int* idx,
                                float* wts, int BM, int* sorted_pair, int* expert_offsets, int* tiles,
                                int* num_tiles, unsigned* count)
{
    __shared__ bool last;
    norm_route<T>(x, y, w, h, eps, gate, bias, H, E, k, norm_topk, scale, idx, wts);
    __threadfence();  // this block's idx reaches L2 before the count says so
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(count, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    moe_sort<true>(idx, gridDim.x * k, E, BM, sorted_pair, expert_offsets, tiles, num_tiles);
    if (threadIdx.x == 0) *count = 0;
}

// ----- the same for 1-2 tokens, spread over several SMs (the batch-1/2 decode step's MoE layers) -----
// norm_route's single block reads the 256 KB router through one SM, half of it only after the wait:
// leaving it out of the batch-1 decode graph saves 7.7 us per MoE layer on an H100. Here warp w of
// block b owns expert e = b * nwarps + w and has its whole router row in registers before pdl_wait;
// then every block norms the rows (8 columns per thread: add_norm_vec8's layout, norm_route's
// roundings), dots them with its experts' rows and leaves the logits in `logits_g`; the last block
// to finish (`count`, which it puts back to 0) routes each token and writes x and h. Only that block
// writes x: every block reads the old x until the count says all of them are done. The router
// folded through out_proj (below) is faster where it applies; this kernel takes the 1-2 token
// shapes it does not (33-64 experts, an out_proj the GEMV does not take, fold_router off).
#define NRS_MAXT 2   // tokens per launch
#define NRS_Q 16     // float4 chunks of a router row per lane: H <= 32 * 4 * NRS_Q = NR_MAX_H
// x[t] = v[t] and h[t] = rmsnorm(v[t]) * w for this thread's 8 columns c0.. of ntok rows
template <typename T>
__device__ __forceinline__ void store_rows8(float* x, T* h, const float (&wv)[8], const float (&v)[NRS_MAXT][8],
                                            const float (&rstd)[NRS_MAXT], int ntok, int H, int c0)
{
#pragma unroll
    for (int t = 0; t < NRS_MAXT; ++t) {
        if (t < ntok) {
            store8<float>(x + (size_t)t * H + c0, v[t]);
            store_normed8<T>(h + (size_t)t * H + c0, wv, v[t], rstd[t]);
        }
    }
}
template <typename T>
__device__ void norm_route_split(float* x, const T* y, const T* w, T* h, float eps, const float* gate,
                                 const float* bias, int H, int E, int k, int norm_topk, float scale, int* idx,
                                 float* wts, int ntok, float* logits_g, unsigned* count)
{
    __shared__ __align__(16) float nrm[NRS_MAXT][NR_MAX_H];
    __shared__ float partial[32], logits[NRS_MAXT][64];
    __shared__ bool last;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int e = blockIdx.x * (blockDim.x >> 5) + warp, nch = H / 4, c0 = tid * 8;
    float4 wr[NRS_Q];
    load_row_f4(wr, reinterpret_cast<const float4*>(gate) + (size_t)min(e, E - 1) * nch, 0, nch, lane);
    pdl_wait();
    pdl_trigger();

    float wv[8], v[NRS_MAXT][8], rstd[NRS_MAXT];
    load8<T>(w + c0, wv);
#pragma unroll
    for (int t = 0; t < NRS_MAXT; ++t) {
        if (t < ntok) {
            const float ss = add_rows8<T, 1>(x + (size_t)t * H + c0, y + (size_t)t * H + c0, H, v[t]);
            rstd[t] = rsqrtf(block_sum(ss, partial) / H + eps);
#pragma unroll
            for (int i = 0; i < 8; ++i) nrm[t][c0 + i] = wv[i] * (v[t][i] * rstd[t]);
        }
    }
    __syncthreads();
    if (e < E) {
#pragma unroll
        for (int t = 0; t < NRS_MAXT; ++t) {
            if (t < ntok) {
                float acc = 0.f;
                fma_row_f4(acc, wr, reinterpret_cast<const float4*>(nrm[t]), 0, nch, lane);
                acc = warp_sum(acc);
                if (lane == 0) logits_g[t * E + e] = acc;
            }
        }
    }
    __threadfence();  // this block's logits reach L2 before the count says so
    __syncthreads();
    if (tid == 0) last = atomicAdd(count, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    store_rows8<T>(x, h, wv, v, rstd, ntok, H, c0);
    if (warp < ntok) {
        for (int j = lane; j < E; j += 32) logits[warp][j] = __ldcg(logits_g + warp * E + j);  // L2: other blocks wrote them
        __syncwarp();
        route_token<float>(logits[warp], bias, E, k, norm_topk, scale, idx + (size_t)warp * k, wts + (size_t)warp * k,
                           lane);
    }
    if (tid == 0) *count = 0;
}

// ----- the same with the sort, sliced over H: 1-64 tokens, E <= 32 (the batch 3-64 decode step) ---------
// norm_route_sort's blocks each read the whole 256 KB router through one SM and take ~7 us at any
// token count, and its sort ~5 more (H100, batch-64 decode: 13 us per MoE layer, 0.29 ms of a 6.5 ms
// step). Here block (s, g) takes columns [256 s, 256 s + 256) of tokens [8 g, 8 g + 8): 32 KB of the
// folded router Gw = gate * ffn_norm weight (weights.fold_routers) in registers before pdl_wait, then
// 12 KB of x and y. The logits of a token are rstd * Gw . v (v = x + y), so the blocks leave per-slice
// sums of squares and partial logits, and rstd needs only the S slices' sums of squares:
//   1. warp w adds token 8 g + w's slice (writes x: each column has one owner), then the warp of
//      experts {w, w + 8, w + 16, w + 24} dots them with the 8 tokens' slices; one 32-value
//      transposing warp reduction leaves lane j the sum of (token j / 4, expert w + 8 (j % 4));
//   2. the blocks of a token group count themselves in (`counts[g]`); the last routes the group's 8
//      tokens (route_token32 on rstd * the summed partials) and counts groups in (`counts[2 * NRL_MAXG]`),
//      and the last group's block sorts the pairs (moe_sort); the others wait for their group's count
//      (all blocks of a launch are resident: the host checks the grid against the SMs) to get rstd,
//      and every block writes its slice of h. `counts[NRL_MAXG + g]` counts the blocks out of the
//      wait, and the last puts the group's counts back to 0.
// (rstd's and the logits' fp32 sums run in another order than norm_route's: routing and h agree with
// it up to the last bit of those sums.)
#define NRL_TOK 8    // tokens per block: a warp per token in step 1
#define NRL_COLS 256  // columns per block: two float4 chunks per lane
#define NRL_EW 4     // experts per warp in step 1: E <= 8 * NRL_EW = 32
#define NRL_MAXG 8   // token groups: 64 tokens
// 4 contiguous values of T <-> a float4 (one 16- or 8-byte access)
template <typename T> __device__ __forceinline__ float4 load4f(const T* p);
template <> __device__ __forceinline__ float4 load4f<float>(const float* p) { return *reinterpret_cast<const float4*>(p); }
template <> __device__ __forceinline__ float4 load4f<bf16>(const bf16* p)
{
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
    return make_float4(a.x, a.y, b.x, b.y);
}
template <typename T> __device__ __forceinline__ void store4f(T* p, float4 v);
template <> __device__ __forceinline__ void store4f<float>(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
template <> __device__ __forceinline__ void store4f<bf16>(bf16* p, float4 v)
{
    __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
    uint2 u;
    u.x = *reinterpret_cast<unsigned*>(&a);
    u.y = *reinterpret_cast<unsigned*>(&b);
    *reinterpret_cast<uint2*>(p) = u;
}
__device__ __forceinline__ float dot4(float4 a, float4 b, float acc)
{
    return fmaf(a.x, b.x, fmaf(a.y, b.y, fmaf(a.z, b.z, fmaf(a.w, b.w, acc))));
}
// 32 values per lane in, lane j out with the warp's sum of value j (31 shuffles instead of 32 x 5):
// at step O each lane keeps the half of its 2 O live values that its lane bit O selects and adds the
// partner's copy of that half. (Steps as template arguments so that `a` stays in registers.)
template <int O> __device__ __forceinline__ void transpose_sum_step(float (&a)[32], int lane)
{
    const bool up = lane & O;  // keep the upper half of the live values, send the lower
#pragma unroll
    for (int i = 0; i < O; ++i) {
        const float send = up ? a[i] : a[i + O], keep = up ? a[i + O] : a[i];
        a[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
    }
    if constexpr (O > 1) transpose_sum_step<O / 2>(a, lane);
}
__device__ __forceinline__ float transpose_sum32(float (&a)[32], int lane)
{
    transpose_sum_step<16>(a, lane);
    return a[0];
}
template <typename T>
__device__ void norm_route_sliced(float* x, const T* y, const T* w, T* h, float eps, const float* Gw,
                                  const float* bias, int H, int E, int k, int norm_topk, float scale, int* idx,
                                  float* wts, int ntok, int BM, int* sorted_pair, int* expert_offsets, int* tiles,
                                  int* num_tiles, float* part, unsigned* counts)
{
    __shared__ __align__(16) float vs[NRL_TOK][NRL_COLS];
    __shared__ float rstd_s[NRL_TOK];
    __shared__ unsigned ticket;
    const int s = blockIdx.x, g = blockIdx.y, S = gridDim.x, G = gridDim.y;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int c[2] = {s * NRL_COLS + 4 * lane, s * NRL_COLS + 128 + 4 * lane};  // this lane's two chunks
    float* part_ss = part + (size_t)G * S * NRL_TOK * 32;  // [G][S][NRL_TOK] after the logits [G][S][NRL_TOK][32]
    float4 gw[NRL_EW][2], wv[2];
#pragma unroll
    for (int j = 0; j < NRL_EW; ++j) {
        const int e = min(warp + 8 * j, E - 1);  // (experts past E compute a copy nobody reads)
#pragma unroll
        for (int q = 0; q < 2; ++q) gw[j][q] = __ldg(reinterpret_cast<const float4*>(Gw + (size_t)e * H + c[q]));
    }
#pragma unroll
    for (int q = 0; q < 2; ++q) wv[q] = load4f<T>(w + c[q]);
    const float bias_lane = lane < E ? bias[lane] : 0.f;
    pdl_wait();
    pdl_trigger();

    // 1. this warp's token: v = x + y over the slice, x written back, v into shared memory
    const int t = g * NRL_TOK + warp;
    float4 v[2] = {make_float4(0.f, 0.f, 0.f, 0.f), make_float4(0.f, 0.f, 0.f, 0.f)};
    float ss = 0.f;
    if (t < ntok) {
        float4 a[2], b[2];
#pragma unroll
        for (int q = 0; q < 2; ++q) {
            a[q] = *reinterpret_cast<const float4*>(x + (size_t)t * H + c[q]);
            b[q] = load4f<T>(y + (size_t)t * H + c[q]);
        }
#pragma unroll
        for (int q = 0; q < 2; ++q) {
            v[q] = make_float4(a[q].x + b[q].x, a[q].y + b[q].y, a[q].z + b[q].z, a[q].w + b[q].w);
            *reinterpret_cast<float4*>(x + (size_t)t * H + c[q]) = v[q];
            ss = dot4(v[q], v[q], ss);
        }
    }
#pragma unroll
    for (int q = 0; q < 2; ++q) *reinterpret_cast<float4*>(&vs[warp][128 * q + 4 * lane]) = v[q];
    ss = warp_sum(ss);
    if (lane == 0) part_ss[((size_t)g * S + s) * NRL_TOK + warp] = ss;
    __syncthreads();
    float acc[NRL_TOK * NRL_EW];
#pragma unroll
    for (int tt = 0; tt < NRL_TOK; ++tt) {
        const float4 u0 = *reinterpret_cast<const float4*>(&vs[tt][4 * lane]);
        const float4 u1 = *reinterpret_cast<const float4*>(&vs[tt][128 + 4 * lane]);
#pragma unroll
        for (int j = 0; j < NRL_EW; ++j) acc[tt * NRL_EW + j] = dot4(gw[j][1], u1, dot4(gw[j][0], u0, 0.f));
    }
    const float mine = transpose_sum32(acc, lane);  // token lane / 4, expert warp + 8 (lane % 4)
    part[(((size_t)g * S + s) * NRL_TOK + lane / NRL_EW) * 32 + warp + 8 * (lane % NRL_EW)] = mine;

    // 2. count in; the group's last block routes it, the last group's sorts; the others wait
    __threadfence();  // this block's partials reach L2 before the count says so
    __syncthreads();
    if (tid == 0) ticket = atomicAdd(&counts[g], 1u);
    __syncthreads();
    const bool group_last = ticket == (unsigned)S - 1;
    if (!group_last) {
        if (tid == 0)
            while (*(volatile unsigned*)&counts[g] < (unsigned)S) __nanosleep(32);
        __syncthreads();
    }
    __threadfence();
    if (tid < NRL_TOK) {
        float sum = 0.f;
        for (int j = 0; j < S; ++j) sum += __ldcg(part_ss + ((size_t)g * S + j) * NRL_TOK + tid);
        rstd_s[tid] = rsqrtf(sum / H + eps);
    }
    __syncthreads();
    if (tid == 0 && atomicAdd(&counts[NRL_MAXG + g], 1u) == (unsigned)S - 1) {  // every block is past the wait
        counts[g] = 0;
        counts[NRL_MAXG + g] = 0;
    }
    const float rstd = rstd_s[warp];
    if (group_last) {
        float lg = 0.f;
        for (int j = 0; j < S; ++j) lg += __ldcg(part + (((size_t)g * S + j) * NRL_TOK + warp) * 32 + lane);
        if (t < ntok)
            route_token32(rstd * lg, bias_lane, E, k, norm_topk, scale, idx + (size_t)t * k, wts + (size_t)t * k, lane);
    }
    if (t < ntok) {
#pragma unroll
        for (int q = 0; q < 2; ++q) {
            const float4 o = make_float4(wv[q].x * rnd<T>(v[q].x * rstd), wv[q].y * rnd<T>(v[q].y * rstd),
                                         wv[q].z * rnd<T>(v[q].z * rstd), wv[q].w * rnd<T>(v[q].w * rstd));
            store4f<T>(h + (size_t)t * H + c[q], o);
        }
    }
    if (!group_last) return;
    __threadfence();  // this group's idx reaches L2 before the count says so
    __syncthreads();
    if (tid == 0) ticket = atomicAdd(&counts[2 * NRL_MAXG], 1u);
    __syncthreads();
    if (ticket != (unsigned)G - 1) return;
    __threadfence();
    moe_sort<true>(idx, ntok * k, E, BM, sorted_pair, expert_offsets, tiles, num_tiles);
    if (tid == 0) counts[2 * NRL_MAXG] = 0;
}

// ----- the mixer's out_proj with the router folded through it (1-2 tokens; see norm_route_folded) -----
// Blocks below nout are gemv's (y = W a); the others compute the partial logits: r[b, q, p] = row q of
// [M ; Gw] (fp32, 2E rows of K) dotted with a_b (q < E) or x_b (q >= E) over the p-th of FR_PARTS
// slices of K, a warp per (row, slice), its weights in registers before the PDL wait. A row in one
// warp took two dependent passes and made the launch longer than the out_proj alone.
#define FR_Q 4      // float4 chunks of a slice per lane and pass: one pass for K = 2048
#define FR_PARTS 4  // slices of K per folded-router row
template <typename T, int NB>
__device__ void folded_router_rows(const float* M, const float* Gw, const T* a, int lda, const float* x, float* r,
                                   int E, int K, int warp0)
{
    const int lane = threadIdx.x & 31, g = warp0 + (threadIdx.x >> 5), q = g / FR_PARTS, part = g % FR_PARTS;
    if (q >= 2 * E) return;
    const bool on_a = q < E;  // M . a (the out_proj's input) or Gw . x (the residual)
    const int nch = K / 4 / FR_PARTS, c0 = part * nch;  // this slice's float4 chunks
    const float4* w4 = reinterpret_cast<const float4*>((on_a ? M : Gw) + (size_t)(on_a ? q : q - E) * K) + c0;
    float acc[NB] = {};
    for (int base = 0; base < nch; base += 32 * FR_Q) {
        float4 wc[FR_Q];
#pragma unroll
        for (int u = 0; u < FR_Q; ++u) {
            const int c = base + u * 32 + lane;
            wc[u] = c < nch ? __ldg(w4 + c) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
        if (base == 0) {
            pdl_wait();
            pdl_trigger();
        }
#pragma unroll
        for (int u = 0; u < FR_Q; ++u) {
            const int c = base + u * 32 + lane;
            if (c < nch) {
#pragma unroll
                for (int b = 0; b < NB; ++b) {
                    const int col = 4 * (c0 + c);
                    const float4 v = on_a ? load4f<T>(a + (size_t)b * lda + col) : load4f<float>(x + (size_t)b * K + col);
                    acc[b] = fmaf(wc[u].x, v.x, fmaf(wc[u].y, v.y, fmaf(wc[u].z, v.z, fmaf(wc[u].w, v.w, acc[b]))));
                }
            }
        }
    }
#pragma unroll
    for (int b = 0; b < NB; ++b) {
        const float s = warp_sum(acc[b]);
        if (lane == 0) r[((size_t)b * 2 * E + q) * FR_PARTS + part] = s;
    }
}

// ----- ffn_norm + routing with the router folded through the mixer's out_proj (1-2 tokens) -------------
// The router logits of a token are rstd * G_w . v with G_w = gate * ffn_norm weight (per column) and
// v = x + y, y = W_out . a the mixer's out_proj of a. So G_w . v = G_w . x + M . a with M = G_w @ W_out
// (both made at load): gemv_out_router computes them in FR_PARTS slices each, r[t, q, p] (rows q < E of
// M . a_t, then E rows of G_w . x_t), beside y in the out_proj launch, and what is left after it needs
// only rstd: one block, no router weights, no hand-off between blocks. On an H100 that takes the
// batch-1 decode step from 1.520 to 1.482 ms (2.280 -> 2.229 ms at batch 2) against norm_route_split.
// (y here is unrounded: the logits are fp32 sums in another order than rstd * G_w . (x + y_T).)
template <typename T>
__device__ void norm_route_folded(float* x, const T* y, const T* w, T* h, float eps, const float* r,
                                  const float* bias, int H, int E, int k, int norm_topk, float scale, int* idx,
                                  float* wts, int ntok)
{
    __shared__ float partial[32];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, c0 = tid * 8;
    const float bias_lane = lane < E ? bias[lane] : 0.f;
    float wv[8];
    load8<T>(w + c0, wv);
    pdl_wait();
    pdl_trigger();
    float v[NRS_MAXT][8], rstd[NRS_MAXT];
#pragma unroll
    for (int t = 0; t < NRS_MAXT; ++t) {
        if (t < ntok) {
            const float ss = add_rows8<T, 1>(x + (size_t)t * H + c0, y + (size_t)t * H + c0, H, v[t]);
            rstd[t] = rsqrtf(block_sum(ss, partial) / H + eps);
        }
    }
    if (warp < ntok) {
        const float* rm = r + ((size_t)warp * 2 * E + lane) * FR_PARTS;  // M . a's slices of expert `lane`
        const float* rg = rm + (size_t)E * FR_PARTS;                       // Gw . x's
        float sm = 0.f, sg = 0.f;
        if (lane < E) {
#pragma unroll
            for (int p = 0; p < FR_PARTS; ++p) {
                sm += rm[p];
                sg += rg[p];
            }
        }
        const float lg = lane < E ? (warp ? rstd[1] : rstd[0]) * (sm + sg) : 0.f;
        route_token32(lg, bias_lane, E, k, norm_topk, scale, idx + (size_t)warp * k, wts + (size_t)warp * k, lane);
    }
    store_rows8<T>(x, h, wv, v, rstd, ntok, H, c0);
}

// ----- unmangled instantiations ---------------------------------------------------------------------
#define OUT_ROUTER_KERNEL(SUF, T)                                                                               \
    extern "C" __global__ void __launch_bounds__(GV_WARPS * 32) gemv_out_router_##SUF(                          \
        const T* a, int lda, const T* W, T* y, int N, int K, int nb, const float* M, const float* Gw,             \
        const float* x, float* r, int E)                                                                        \
    {                                                                                                           \
        const int nout = (N + GV_WARPS - 1) / GV_WARPS, row0 = ((int)blockIdx.x - nout) * GV_WARPS;             \
        if (nb == 1) {                                                                                          \
            if (row0 < 0) gemv<T, T, 1>(a, lda, W, y, N, N, K);                                                  \
            else folded_router_rows<T, 1>(M, Gw, a, lda, x, r, E, K, row0);                                      \
        } else {                                                                                                \
            if (row0 < 0) gemv<T, T, 2>(a, lda, W, y, N, N, K);                                                  \
            else folded_router_rows<T, 2>(M, Gw, a, lda, x, r, E, K, row0);                                      \
        }                                                                                                       \
    }
OUT_ROUTER_KERNEL(bf16, bf16)
OUT_ROUTER_KERNEL(f32, float)
#define NORM_ROUTE_KERNEL(SUF, T)                                                                               \
    extern "C" __global__ void __launch_bounds__(NR_MAX_H / 2) norm_route_##SUF(                                \
        float* x, const T* y, const T* w, T* h, float eps, const float* gate, const float* bias, int H, int E,   \
        int k, int norm_topk, float scale, int* idx, float* wts)                                                \
    { norm_route<T>(x, y, w, h, eps, gate, bias, H, E, k, norm_topk, scale, idx, wts); }
NORM_ROUTE_KERNEL(bf16, bf16)
NORM_ROUTE_KERNEL(f32, float)
#define NORM_ROUTE_SORT_KERNEL(SUF, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(NR_MAX_H / 2) norm_route_sort_##SUF(                           \
        float* x, const T* y, const T* w, T* h, float eps, const float* gate, const float* bias, int H, int E,   \
        int k, int norm_topk, float scale, int* idx, float* wts, int BM, int* sorted_pair, int* expert_offsets,  \
        int* tiles, int* num_tiles, unsigned* count)                                                            \
    {                                                                                                           \
        norm_route_sort<T>(x, y, w, h, eps, gate, bias, H, E, k, norm_topk, scale, idx, wts, BM, sorted_pair,    \
                           expert_offsets, tiles, num_tiles, count);                                            \
    }
NORM_ROUTE_SORT_KERNEL(bf16, bf16)
NORM_ROUTE_SORT_KERNEL(f32, float)
#define NORM_ROUTE_SPLIT_KERNEL(SUF, T)                                                                         \
    extern "C" __global__ void __launch_bounds__(NR_MAX_H / 8) norm_route_split_##SUF(                          \
        float* x, const T* y, const T* w, T* h, float eps, const float* gate, const float* bias, int H, int E,   \
        int k, int norm_topk, float scale, int* idx, float* wts, int ntok, float* logits_g, unsigned* count)     \
    { norm_route_split<T>(x, y, w, h, eps, gate, bias, H, E, k, norm_topk, scale, idx, wts, ntok, logits_g, count); }
NORM_ROUTE_SPLIT_KERNEL(bf16, bf16)
NORM_ROUTE_SPLIT_KERNEL(f32, float)
#define NORM_ROUTE_SLICED_KERNEL(SUF, T)                                                                        \
    extern "C" __global__ void __launch_bounds__(NRL_TOK * 32) norm_route_sliced_##SUF(                          \
        float* x, const T* y, const T* w, T* h, float eps, const float* Gw, const float* bias, int H, int E,     \
        int k, int norm_topk, float scale, int* idx, float* wts, int ntok, int BM, int* sorted_pair,             \
        int* expert_offsets, int* tiles, int* num_tiles, float* part, unsigned* counts)                         \
    {                                                                                                           \
        norm_route_sliced<T>(x, y, w, h, eps, Gw, bias, H, E, k, norm_topk, scale, idx, wts, ntok, BM,           \
                             sorted_pair, expert_offsets, tiles, num_tiles, part, counts);                      \
    }
NORM_ROUTE_SLICED_KERNEL(bf16, bf16)
NORM_ROUTE_SLICED_KERNEL(f32, float)
#define NORM_ROUTE_FOLDED_KERNEL(SUF, T)                                                                        \
    extern "C" __global__ void __launch_bounds__(NR_MAX_H / 8) norm_route_folded_##SUF(                         \
        float* x, const T* y, const T* w, T* h, float eps, const float* r, const float* bias, int H, int E, int k, \
        int norm_topk, float scale, int* idx, float* wts, int ntok)                                              \
    { norm_route_folded<T>(x, y, w, h, eps, r, bias, H, E, k, norm_topk, scale, idx, wts, ntok); }
NORM_ROUTE_FOLDED_KERNEL(bf16, bf16)
NORM_ROUTE_FOLDED_KERNEL(f32, float)
