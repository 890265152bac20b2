// Session 10 probe kernels (timing A/B only; not part of the engine). gemv.cu's kernels plus:
//   norm_route_split_noroute_bf16: norm_route_split whose last block writes x and h but does not route
//   norm_route_split_nocount_bf16: no arrival count at all: block 0 writes x and h, nobody routes
//       (x is written while other blocks may still read it: wrong by construction, timing only)
//   moe_gemv_down_lastnorm_bf16: the MoE down GEMV whose last block does the next add_norm
//       (x += the 4 slots of ys; h = rmsnorm(x) * w) for ntok rows: correct, checked by the probe script
#include "gemv.cu"

template <bool COUNT, bool ROUTE>
__device__ void nrs_probe(float* x, const bf16* y, const bf16* w, bf16* h, float eps, const float* gate,
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
    load8<bf16>(w + c0, wv);
#pragma unroll
    for (int t = 0; t < NRS_MAXT; ++t) {
        if (t < ntok) {
            const float ss = add_rows8<bf16, 1>(x + (size_t)t * H + c0, y + (size_t)t * H + c0, H, v[t]);
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
    if (COUNT) {
        __threadfence();
        __syncthreads();
        if (tid == 0) last = atomicAdd(count, 1u) == gridDim.x - 1;
        __syncthreads();
        if (!last) return;
        __threadfence();
    } else if (blockIdx.x != 0) {
        return;
    }
#pragma unroll
    for (int t = 0; t < NRS_MAXT; ++t) {
        if (t < ntok) {
            store8<float>(x + (size_t)t * H + c0, v[t]);
            store_normed8<bf16>(h + (size_t)t * H + c0, wv, v[t], rstd[t]);
        }
    }
    if (ROUTE && warp < ntok) {
        for (int j = lane; j < E; j += 32) logits[warp][j] = __ldcg(logits_g + warp * E + j);
        __syncwarp();
        route_token<float>(logits[warp], bias, E, k, norm_topk, scale, idx + (size_t)warp * k, wts + (size_t)warp * k,
                           lane);
    }
    if (COUNT && tid == 0) *count = 0;
}
#define NRS_PROBE(NAME, COUNT, ROUTE)                                                                           \
    extern "C" __global__ void __launch_bounds__(NR_MAX_H / 8) NAME(                                            \
        float* x, const bf16* y, const bf16* w, bf16* h, float eps, const float* gate, const float* bias, int H,  \
        int E, int k, int norm_topk, float scale, int* idx, float* wts, int ntok, float* logits_g, unsigned* count) \
    { nrs_probe<COUNT, ROUTE>(x, y, w, h, eps, gate, bias, H, E, k, norm_topk, scale, idx, wts, ntok, logits_g, count); }
NRS_PROBE(norm_route_split_noroute_bf16, true, false)
NRS_PROBE(norm_route_split_nocount_bf16, false, false)

// down GEMV (topk = 4 slots per token, H = N = 8 * blockDim) + the next add_norm in the last block
extern "C" __global__ void __launch_bounds__(GV_WARPS * 32)
    moe_gemv_down_lastnorm_bf16(const bf16* act, const bf16* w2, bf16* ys, const int* idx, const float* wts, int N,
                                int K, float* x, const bf16* nw, bf16* h, float eps, unsigned* count, int ntok)
{
    __shared__ float partial[32];
    __shared__ bool last;
    moe_gemv_down<bf16>(act, w2, ys, idx, wts, N, K);  // (no early return in it for N % 8 == 0)
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(count, 1u) == gridDim.x * gridDim.y - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const int c0 = threadIdx.x * 8;
    float wv[8];
    load8<bf16>(nw + c0, wv);
    for (int t = 0; t < ntok; ++t) {
        float v[8], add[4][8];
        const float4* xr = reinterpret_cast<const float4*>(x + (size_t)t * N + c0);
        const float4 a = __ldcg(xr), b = __ldcg(xr + 1);
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const uint4 u = __ldcg(reinterpret_cast<const uint4*>(ys + ((size_t)t * 4 + j) * N + c0));
            const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float2 f = __bfloat1622float2(p[i]);
                add[j][2 * i] = f.x;
                add[j][2 * i + 1] = f.y;
            }
        }
        float ss = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            float s = 0.f;
#pragma unroll
            for (int j = 0; j < 4; ++j) s += add[j][i];
            v[i] += s;
            ss += v[i] * v[i];
        }
        const float rstd = rsqrtf(block_sum(ss, partial) / N + eps);
        store8<float>(x + (size_t)t * N + c0, v);
        store_normed8<bf16>(h + (size_t)t * N + c0, wv, v, rstd);
    }
    if (threadIdx.x == 0) *count = 0;
}
