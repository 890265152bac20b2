// The optimized engine's memory-bound kernels: embedding gather, residual add fused with RMSNorm,
// SiLU*up for the dense FFN, the fused ShortConv core, q/k RMSNorm + RoPE, routing and the
// sort of (token, slot) pairs by expert. Storage type T = float or bf16, math in float; where
// HF rounds to bf16 between ops (model.md 2.10) we round the same way (rnd<T>, identity in fp32).
#include "common.cuh"

#define NORM_MAXV 16  // values per thread kept in registers by add_norm: H <= 16 * blockDim

// ----- embedding: x[t, :] = float(table[ids[t], :]) (the fp32 residual stream) ------------------
template <typename T>
__device__ void embedding_gather(const int* ids, const T* table, float* x, int H)
{
    const T* row = table + (size_t)ids[blockIdx.x] * H;
    float* out = x + (size_t)blockIdx.x * H;
    for (int c = threadIdx.x; c < H; c += blockDim.x) out[c] = to_f<T>(row[c]);
}

// ----- x += sum_j y[row*nadd + j]; h = rmsnorm(x) * w --------------------------------------------
// One block per row. x is the fp32 residual stream; y holds nadd addends per row (1 for the mixer
// or dense FFN output, k for the MoE's per-slot outputs: the expert combine happens here, in a
// fixed slot order, so it is deterministic). nadd = 0: norm only. h is rounded as HF does:
// normalised value to T, then weight * that to T.
// h32 (optional): the same normalised row in fp32, unrounded (the bf16 engine's fp32 router input).
// Every load (x, the addends, w) is issued in the first pass and every store happens in the second:
// before, a store to x between the loads (x and y may alias as far as the compiler knows) and w
// loaded beside each h store serialised them, and the kernel took ~10 us per launch whatever the
// row count (session 3's profile).
template <typename T>
__device__ void add_norm(float* __restrict__ x, const T* __restrict__ y, int nadd, const T* __restrict__ w,
                         T* __restrict__ h, float* __restrict__ h32, int H, float eps)
{
    __shared__ float partial[32];
    const size_t row = blockIdx.x;
    float* xr = x + row * H;
    float v[NORM_MAXV], wv[NORM_MAXV];  // the row and the norm weight, loaded together up front
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < NORM_MAXV; ++i) {
        int c = threadIdx.x + i * blockDim.x;
        v[i] = 0.f;
        wv[i] = 0.f;
        if (c < H) {
            wv[i] = to_f<T>(w[c]);
            float add = 0.f;
            for (int j = 0; j < nadd; ++j) add += to_f<T>(y[(row * nadd + j) * H + c]);
            float nx = xr[c] + add;
            v[i] = nx;
            ss += nx * nx;
        }
    }
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float s = threadIdx.x < (blockDim.x >> 5) ? partial[threadIdx.x] : 0.f;
        s = warp_sum(s);
        if (threadIdx.x == 0) partial[0] = s;
    }
    __syncthreads();
    const float rstd = rsqrtf(partial[0] / H + eps);
    T* hr = h + row * H;
#pragma unroll
    for (int i = 0; i < NORM_MAXV; ++i) {
        int c = threadIdx.x + i * blockDim.x;
        if (c < H) {
            if (nadd) xr[c] = v[i];
            hr[c] = from_f<T>(wv[i] * rnd<T>(v[i] * rstd));
            if (h32) h32[row * H + c] = wv[i] * (v[i] * rstd);
        }
    }
}

// ----- dense SwiGLU middle: act[r, c] = silu(gu[r, c]) * gu[r, I + c] ------------------------------
template <typename T>
__device__ void silu_mul(const T* gu, T* act, int rows, int I)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * I) return;
    size_t r = i / I, c = i % I;
    float g = to_f<T>(gu[r * 2 * I + c]), u = to_f<T>(gu[r * 2 * I + I + c]);
    act[i] = from_f<T>(rnd<T>(silu_f(g)) * u);
}

// ----- ShortConv core: y = C * causal_conv3(B * x), per sequence of S tokens -----------------------
// bcx [T, 3H] (in_proj output, chunks B | C | x), conv_w [H, L] (PyTorch cross-correlation: the
// last tap multiplies the current token), y [T, H]. Positions before a sequence's start are zero.
template <typename T>
__device__ void shortconv(const T* bcx, const T* conv_w, T* y, int ntok, int S, int H, int L)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)ntok * H) return;
    int t = (int)(i / H), c = (int)(i % H);
    int s = t % S;  // position inside its sequence
    float acc = 0.f;
    for (int j = 0; j < L; ++j) {
        int back = L - 1 - j;  // tap j looks `back` tokens behind
        if (s - back < 0) continue;
        const T* r = bcx + (size_t)(t - back) * 3 * H;
        float bx = rnd<T>(to_f<T>(r[c]) * to_f<T>(r[2 * H + c]));
        acc += to_f<T>(conv_w[c * L + j]) * bx;
    }
    float C = to_f<T>(bcx[(size_t)t * 3 * H + H + c]);
    y[i] = from_f<T>(C * rnd<T>(acc));
}

// ----- q/k RMSNorm + RoPE, and the head-major copy of q, k, v ---------------------------------------
// qkv [B*S, (nh + 2 nkv) * hd] (fused projection output). One warp per (token, head slot) over the
// nh + 2 nkv head slots. Writes q [B, nh, S, hd], k and v [B, nkv, S, hd]. NeoX rotate_half RoPE
// at position s (token index inside its sequence), angles in fp32, cos/sin rounded to T (HF).
template <typename T>
__device__ void qk_norm_rope(const T* qkv, const T* qw, const T* kw, T* q, T* k, T* v,
                             int ntok, int S, int nh, int nkv, int hd, float eps, float theta)
{
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    const int slots = nh + 2 * nkv;
    if (warp >= ntok * slots) return;
    const int t = warp / slots, slot = warp % slots;
    const int b = t / S, s = t % S;
    const T* src = qkv + (size_t)t * slots * hd + (size_t)slot * hd;
    if (slot >= nh + nkv) {  // v: copied, not normalised
        int head = slot - nh - nkv;
        T* dst = v + (((size_t)b * nkv + head) * S + s) * hd;
        for (int d = lane; d < hd; d += 32) dst[d] = src[d];
        return;
    }
    const bool is_q = slot < nh;
    const int head = is_q ? slot : slot - nh;
    const T* w = is_q ? qw : kw;
    T* dst = is_q ? q + (((size_t)b * nh + head) * S + s) * hd : k + (((size_t)b * nkv + head) * S + s) * hd;
    norm_rope_head<T>(src, w, dst, hd, eps, theta, s, lane);
}

// ----- routing: sigmoid, top-k on sigmoid + expert_bias (fp32), renormalised weights ---------------
// One warp per token; lane e holds experts e and e + 32 (E <= 64). Ties go to the lower expert id.
// In bf16 the sigmoid is rounded to bf16 as HF does; the biased scores and top-k are fp32.
template <typename T>
__device__ void route(const T* logits, const float* bias, int ntok, int E, int k, int norm_topk,
                      float scale, int* idx, float* wts)
{
    const int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (t >= ntok) return;
    float s[2], score[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        int e = lane + 32 * i;
        s[i] = 0.f;
        score[i] = -INFINITY;
        if (e < E) {
            s[i] = rnd<T>(1.0f / (1.0f + expf(-to_f<T>(logits[(size_t)t * E + e]))));
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
        idx[(size_t)t * k + lane] = chosen_e;
        wts[(size_t)t * k + lane] = w * scale;
    }
}

// ----- sort (token, slot) pairs by expert, and the grouped GEMM's tile table -----------------------
// One block. pair p = t * k + j routes to idx[p]. Output: sorted_pair[pos] = p, grouped by expert
// in ascending id (order inside an expert is arbitrary: every row is computed independently and
// the combine goes by pair id, so results do not depend on it); expert_offsets[E + 1]; and for
// the grouped GEMM with row tiles of BM: tiles[3 * i] = {expert, first row, end row}, num_tiles.
// Everything stays on the device: no host synchronisation between routing and the experts.
#define SORT_MAX_E 256
__device__ void moe_sort(const int* idx, int npairs, int E, int BM, int* sorted_pair, int* expert_offsets,
                         int* tiles, int* num_tiles)
{
    __shared__ int count[SORT_MAX_E], cursor[SORT_MAX_E];
    for (int e = threadIdx.x; e < E; e += blockDim.x) count[e] = 0;
    __syncthreads();
    for (int p = threadIdx.x; p < npairs; p += blockDim.x) atomicAdd(&count[idx[p]], 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        int acc = 0, tile = 0;
        for (int e = 0; e < E; ++e) {
            cursor[e] = acc;
            expert_offsets[e] = acc;
            for (int r = 0; r < count[e]; r += BM, ++tile) {
                tiles[3 * tile] = e;
                tiles[3 * tile + 1] = acc + r;
                tiles[3 * tile + 2] = acc + count[e];
            }
            acc += count[e];
        }
        expert_offsets[E] = acc;
        *num_tiles = tile;
    }
    __syncthreads();
    for (int p = threadIdx.x; p < npairs; p += blockDim.x) {
        int pos = atomicAdd(&cursor[idx[p]], 1);
        sorted_pair[pos] = p;
    }
}

// ----- unmangled instantiations ---------------------------------------------------------------------
#define INSTANTIATE(SUF, T)                                                                                     \
extern "C" __global__ void embedding_gather_##SUF(const int* ids, const T* table, float* x, int H)             \
{ embedding_gather<T>(ids, table, x, H); }                                                                      \
extern "C" __global__ void add_norm_##SUF(float* x, const T* y, int nadd, const T* w, T* h, float* h32, int H,  \
    float eps)                                                                                                  \
{ add_norm<T>(x, y, nadd, w, h, h32, H, eps); }                                                                      \
extern "C" __global__ void silu_mul_##SUF(const T* gu, T* act, int rows, int I) { silu_mul<T>(gu, act, rows, I); } \
extern "C" __global__ void shortconv_##SUF(const T* bcx, const T* conv_w, T* y, int ntok, int S, int H, int L) \
{ shortconv<T>(bcx, conv_w, y, ntok, S, H, L); }                                                                \
extern "C" __global__ void qk_norm_rope_##SUF(const T* qkv, const T* qw, const T* kw, T* q, T* k, T* v,       \
    int ntok, int S, int nh, int nkv, int hd, float eps, float theta)                                           \
{ qk_norm_rope<T>(qkv, qw, kw, q, k, v, ntok, S, nh, nkv, hd, eps, theta); }                                    \
extern "C" __global__ void route_##SUF(const T* logits, const float* bias, int ntok, int E, int k,             \
    int norm_topk, float scale, int* idx, float* wts)                                                           \
{ route<T>(logits, bias, ntok, E, k, norm_topk, scale, idx, wts); }

INSTANTIATE(f32, float)
INSTANTIATE(bf16, bf16)

extern "C" __global__ void moe_sort_pairs(const int* idx, int npairs, int E, int BM, int* sorted_pair,
                                          int* expert_offsets, int* tiles, int* num_tiles)
{ moe_sort(idx, npairs, E, BM, sorted_pair, expert_offsets, tiles, num_tiles); }
