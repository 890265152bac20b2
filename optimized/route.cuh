// Routing of one token (LFM2-MoE's router): sigmoid of the router logits, top-k on sigmoid + expert_bias
// (fp32), the chosen sigmoids renormalised and scaled. Shared by elementwise.cu's route (logits
// from a GEMM) and router.cu's router_topk (logits computed in the same block), so both choose alike.
#pragma once
#include "common.cuh"

// One warp; lane e holds experts e and e + 32 (E <= 64). Ties go to the lower expert id. With
// T = bf16 the sigmoid is rounded to bf16 as HF does; the biased scores and top-k are fp32.
// row_logits [E] of this token; writes idx_row[k], wts_row[k].
template <typename T>
__device__ void route_token(const T* row_logits, const float* bias, int E, int k, int norm_topk, float scale,
                            int* idx_row, float* wts_row, int lane)
{
    float s[2], score[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        int e = lane + 32 * i;
        s[i] = 0.f;
        score[i] = -INFINITY;
        if (e < E) {
            s[i] = rnd<T>(1.0f / (1.0f + expf(-to_f<T>(row_logits[e]))));
            score[i] = s[i] + bias[e];
        }
    }
    float chosen_w = 0.f, total = 0.f;  // lane j < k keeps slot j's weight
    int chosen_e = 0;
    for (int j = 0; j < k; ++j) {
        float best = score[0];
        int be = lane;
        if (score[1] > best) { best = score[1]; be = lane + 32; }
#pragma unroll
        for (int o = 16; o; o >>= 1) {
            float ob = __shfl_xor_sync(0xffffffffu, best, o);
            int oe = __shfl_xor_sync(0xffffffffu, be, o);
            if (ob > best || (ob == best && oe < be)) { best = ob; be = oe; }
        }
        float w = __shfl_sync(0xffffffffu, be < 32 ? s[0] : s[1], be & 31);
        if (lane == (be & 31)) score[be >> 5] = -INFINITY;
        total += w;
        if (lane == j) { chosen_w = w; chosen_e = be; }
    }
    if (lane < k) {
        float w = norm_topk ? chosen_w / (total + 1e-6f) : chosen_w;
        idx_row[lane] = chosen_e;
        wts_row[lane] = w * scale;
    }
}

// The same routing for E <= 32, built for latency: lane e holds expert e's logit and bias (anything
// for e >= E). Instead of route_token's k dependent pick rounds, each expert's rank in the pick
// order (score descending, ties to the lower id) is counted against all 32 scores with independent
// shuffles; the expert ranked p is found by a ballot, and the weights are summed over the k picks in
// pick order, so idx and wts come out bit-equal to route_token's. Used by router.cu's
// norm_route_folded, where the routing is on the batch-1 decode step's critical path.
__device__ __forceinline__ void route_token32(float logit, float bias_e, int E, int k, int norm_topk, float scale,
                                              int* idx_row, float* wts_row, int lane)
{
    const bool real = lane < E;
    const float s = real ? 1.0f / (1.0f + expf(-logit)) : 0.f;
    const float score = real ? s + bias_e : -INFINITY;  // past E: ranked after every expert, never picked
    int rank = 0;
#pragma unroll 8  // (fully unrolled, the shuffles' results take registers from the kernel around it)
    for (int o = 0; o < 32; ++o) {
        const float so = __shfl_sync(0xffffffffu, score, o);
        rank += so > score || (so == score && o < lane);
    }
    float total = 0.f, chosen_w = 0.f;
    int chosen_e = 0;
    for (int p = 0; p < k; ++p) {
        const int e = __ffs(__ballot_sync(0xffffffffu, rank == p)) - 1;
        const float w = __shfl_sync(0xffffffffu, s, e);
        total += w;
        if (lane == p) {
            chosen_e = e;
            chosen_w = w;
        }
    }
    if (lane < k) {
        idx_row[lane] = chosen_e;
        wts_row[lane] = (norm_topk ? chosen_w / (total + 1e-6f) : chosen_w) * scale;
    }
}
