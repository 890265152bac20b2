// Phase 2 (plan 1.1, MoE expert batching): routing, grouping by expert, gather, SwiGLU
// activation and the weighted combine, all on the GPU. float32; extern "C" so PyCUDA finds them.
//
// Layout of the routing result ("pairs"): pair p = token * k + slot, for rows tokens and k slots.
//   idx[p]      expert chosen in that slot (slot 0 = highest biased score)
//   wts[p]      its routing weight
// Grouping (a deterministic counting sort, no atomics): rows of the expert-ordered buffers are
// ordered by (expert, token, slot); counts[e] rows belong to expert e, starting at
// offset(e) = counts[0] + ... + counts[e-1].
//   row_pair[r] the pair that grouped row r holds
//   pair_row[p] the grouped row of pair p

#include "silu_mul.cuh"

#define MAX_TOPK 16  // = engine MAX_TOPK; k is checked on the host
#define WARP 32

// ---- routing: one thread per token --------------------------------------------------------
// s = sigmoid(logits); choice = s + bias (bias may be null); top-k of choice, descending; on an
// exact tie the LOWER expert index wins: the order of a stable descending sort, as the baseline's
// numpy routing. (torch.topk leaves the tie order unspecified; its CPU version prefers the higher.)
// Weights come from the UNBIASED s, renormalised by (sum + 1e-6) when norm_topk, times scale.
extern "C" __global__ void route_topk(const float* logits, const float* bias, int* idx, float* wts,
                                      int rows, int E, int k, int norm_topk, float scale)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= rows)
        return;
    const float* row = logits + (size_t)t * E;
    int chosen[MAX_TOPK];
    float w[MAX_TOPK];
    float sum = 0.0f;
    for (int j = 0; j < k; ++j) {
        int best = -1;
        float best_score = 0.0f;
        for (int e = 0; e < E; ++e) {
            bool taken = false;
            for (int i = 0; i < j; ++i)
                taken |= (chosen[i] == e);
            if (taken)
                continue;
            float s = 1.0f / (1.0f + expf(-row[e]));
            float score = bias ? s + bias[e] : s;
            if (best < 0 || score > best_score) {  // strict: an equal score keeps the lower index
                best = e;
                best_score = score;
            }
        }
        chosen[j] = best;
        w[j] = 1.0f / (1.0f + expf(-row[best]));
        sum += w[j];  // in slot order, as torch's sum over k values
    }
    for (int j = 0; j < k; ++j) {
        float v = norm_topk ? w[j] / (sum + 1e-6f) : w[j];
        idx[(size_t)t * k + j] = chosen[j];
        wts[(size_t)t * k + j] = v * scale;
    }
}

// ---- grouping -------------------------------------------------------------------------------
// counts[e] = number of pairs routed to e. One block per expert; a block reduction of per-thread
// counts (integer sums, so the result is exact whatever the order).
extern "C" __global__ void expert_counts(const int* idx, int* counts, int pairs)
{
    __shared__ int partial[1024 / WARP];
    int e = blockIdx.x;
    int n = 0;
    for (int p = threadIdx.x; p < pairs; p += blockDim.x)
        n += (idx[p] == e);
    for (int off = WARP / 2; off > 0; off /= 2)
        n += __shfl_down_sync(0xffffffffu, n, off);
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    if (lane == 0)
        partial[warp] = n;
    __syncthreads();
    if (threadIdx.x == 0) {
        int total = 0;
        for (int i = 0; i < (int)(blockDim.x + WARP - 1) / WARP; ++i)
            total += partial[i];
        counts[e] = total;
    }
}

// Fills row_pair / pair_row. One block per expert walks all pairs in order, a blockDim-sized
// chunk at a time; a pair's rank within its expert = matching pairs before it, from a warp
// ballot (rank within the warp) plus the totals of the earlier warps and earlier chunks. So the
// grouped order is (expert, token, slot), the same on every run. blockDim: multiple of 32, <= 1024.
extern "C" __global__ void expert_scatter(const int* idx, const int* counts, int* row_pair, int* pair_row,
                                          int pairs)
{
    __shared__ int warp_total[1024 / WARP];
    __shared__ int base;  // offset of this expert + matches in earlier chunks
    int e = blockIdx.x;
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
    if (threadIdx.x == 0) {
        int off = 0;
        for (int i = 0; i < e; ++i)
            off += counts[i];
        base = off;
    }
    __syncthreads();
    for (int start = 0; start < pairs; start += blockDim.x) {
        int p = start + threadIdx.x;
        bool match = p < pairs && idx[p] == e;
        unsigned ballot = __ballot_sync(0xffffffffu, match);
        int before_in_warp = __popc(ballot & ((1u << lane) - 1u));
        if (lane == 0)
            warp_total[warp] = __popc(ballot);
        __syncthreads();
        int before = base + before_in_warp;
        for (int i = 0; i < warp; ++i)
            before += warp_total[i];
        if (match) {
            row_pair[before] = p;
            pair_row[p] = before;
        }
        __syncthreads();  // everyone has read base and warp_total
        if (threadIdx.x == 0) {
            int chunk = 0;
            for (int i = 0; i < warps; ++i)
                chunk += warp_total[i];
            base += chunk;
        }
        __syncthreads();
    }
}

// ---- data movement and math ---------------------------------------------------------------
// x_grouped[r, :] = h[row_pair[r] / k, :]. Grid (rows of the grouped buffer, column blocks).
extern "C" __global__ void gather_rows(const float* h, const int* row_pair, float* x_grouped, int n_rows,
                                       int H, int k)
{
    int r = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (r < n_rows && c < H)
        x_grouped[(size_t)r * H + c] = h[(size_t)(row_pair[r] / k) * H + c];
}

// gate = silu(gate) * up, in place, n values: the baseline's silu and mul kernels in one pass,
// with the same float operations in the same order.
extern "C" __global__ void silu_mul(float* gate, const float* up, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        gate[i] = silu_mul_value(gate[i], up[i]);
}

// out[t, :] = sum over slots j = 0..k-1, in slot order, of wts[t*k+j] * y_grouped[pair_row[t*k+j], :].
// Each output element is written by one thread, no atomics; the products and sums are rounded
// separately (no fused multiply-add) starting from 0, exactly as the baseline's
// `out[tok] += w * y` on the CPU. Grid (tokens, column blocks).
extern "C" __global__ void combine_slots(const float* y_grouped, const int* pair_row, const float* wts,
                                         float* out, int rows, int H, int k)
{
    int t = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (t >= rows || c >= H)
        return;
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) {
        int p = t * k + j;
        acc = __fadd_rn(acc, __fmul_rn(wts[p], y_grouped[(size_t)pair_row[p] * H + c]));
    }
    out[(size_t)t * H + c] = acc;
}
