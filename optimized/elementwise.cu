// The optimized engine's memory-bound kernels: embedding gather, residual add fused with RMSNorm,
// SiLU*up for the dense FFN, the fused ShortConv core, q/k RMSNorm + RoPE, routing and the launch
// of the sort of (token, slot) pairs by expert (moe_sort.cuh). Storage type T = float or bf16,
// math in float; where HF rounds to bf16 between ops (Lfm2MoeRMSNorm and friends) we round the
// same way (rnd<T>, identity in fp32).
#include "common.cuh"
#include "moe_sort.cuh"
#include "route.cuh"

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
// The general case (any H up to NORM_MAXV * 256, any nadd); rows of 8 * blockDim columns take
// add_norm_vec8 below, which issues all its loads at once.
template <typename T>
__device__ void add_norm(float* __restrict__ x, const T* y, int nadd, const T* __restrict__ w,
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
    const float rstd = rsqrtf(block_sum(ss, partial) / H + eps);
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

// ----- the same, for rows of exactly 8 * blockDim columns (the real model: H = 2048, 256 threads) --
// Each thread owns 8 contiguous columns, and NADD is a compile-time constant, so every load (w, x,
// each addend) is a 16-byte vector load issued before the first arithmetic that needs it, with no
// branch between them: one memory round trip per launch instead of add_norm's ~8 dependent ones
// (its per-column `if (c < H)` and runtime addend loop keep ptxas from hoisting loads: ~10.6 us
// per launch on an H100, whatever the row count). Same arithmetic and addend order as
// add_norm; only the sum of squares is added up in another order (fp32 rounding, ~1e-7 relative).
template <typename T, int NADD>
__device__ void add_norm_vec8(float* __restrict__ x, const T* y, const T* __restrict__ w,
                              T* __restrict__ h, float* __restrict__ h32, int H, float eps)
{
    __shared__ float partial[32];
    const size_t row = blockIdx.x;
    const int c0 = threadIdx.x * 8;
    float* xr = x + row * H + c0;
    float v[8], wv[8];
    load8<T>(w + c0, wv);
    const float ss = add_rows8<T, NADD>(xr, y + row * NADD * H + c0, H, v);
    const float rstd = rsqrtf(block_sum(ss, partial) / H + eps);
    if (NADD) store8<float>(xr, v);
    store_normed8<T>(h + row * H + c0, wv, v, rstd);
    if (h32) {
        float out[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) out[i] = wv[i] * (v[i] * rstd);
        store8<float>(h32 + row * H + c0, out);
    }
}

// ----- the embedding and the first layer's op_norm in one launch (rows of 8 * blockDim columns) ---
// x[t] = float(table[ids[t]]); h[t] = rmsnorm(x[t]) * w: embedding_gather then add_norm_vec8 with no
// addend, the same values bit for bit, and one dependent launch fewer per forward and decode step.
template <typename T>
__device__ void embed_norm_vec8(const int* ids, const T* table, float* x, const T* w, T* h, int H, float eps)
{
    __shared__ float partial[32];
    const size_t row = blockIdx.x;
    const int c0 = threadIdx.x * 8;
    float v[8], wv[8];
    load8<T>(w + c0, wv);
    load8<T>(table + (size_t)ids[row] * H + c0, v);
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) ss += v[i] * v[i];
    const float rstd = rsqrtf(block_sum(ss, partial) / H + eps);
    store8<float>(x + row * H + c0, v);
    store_normed8<T>(h + row * H + c0, wv, v, rstd);
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

// ----- the same for L = 3 taps, a thread per 2 channels x SC_TOKENS consecutive tokens -----------------
// shortconv re-reads each token's B and x once per tap, 2 bytes at a time (bf16 8 x 512: 82 us per
// layer, ~0.8 TB/s of the 67 MB it must move). Here a thread loads the B*x of its SC_TOKENS tokens
// and the 2 before them once, as pairs of channels (4- or 8-byte loads, 128-256 B per warp), and
// walks the window in registers. Per output the same arithmetic as shortconv, taps in the same order
// and skipped the same way before a sequence's start, so both kernels give the same bits.
#define SC_TOKENS 8
#define SC_L 3
template <typename T>
__device__ void shortconv_tiled(const T* bcx, const T* conv_w, T* y, int ntok, int S, int H)
{
    const int c = 2 * (blockIdx.x * blockDim.x + threadIdx.x), t0 = blockIdx.y * SC_TOKENS;
    if (c >= H) return;
    float w[2][SC_L];
#pragma unroll
    for (int j = 0; j < SC_L; ++j) {
        w[0][j] = to_f<T>(conv_w[c * SC_L + j]);
        w[1][j] = to_f<T>(conv_w[(c + 1) * SC_L + j]);
    }
    float2 bx[SC_TOKENS + SC_L - 1];  // B*x of tokens t0 - 2 .. t0 + SC_TOKENS - 1 (unused when < 0 or past ntok)
#pragma unroll
    for (int i = 0; i < SC_TOKENS + SC_L - 1; ++i) {
        const int t = t0 - (SC_L - 1) + i;
        bx[i] = make_float2(0.f, 0.f);
        if (t >= 0 && t < ntok) {
            const T* r = bcx + (size_t)t * 3 * H;
            const float2 b = load2<T>(r + c), x = load2<T>(r + 2 * H + c);
            bx[i] = make_float2(rnd<T>(b.x * x.x), rnd<T>(b.y * x.y));
        }
    }
#pragma unroll
    for (int i = 0; i < SC_TOKENS; ++i) {
        const int t = t0 + i;
        if (t >= ntok) break;
        const int s = t % S;
        float a0 = 0.f, a1 = 0.f;
#pragma unroll
        for (int j = 0; j < SC_L; ++j) {
            const int back = SC_L - 1 - j;
            if (s - back < 0) continue;
            a0 += w[0][j] * bx[i + j].x;
            a1 += w[1][j] * bx[i + j].y;
        }
        const float2 C = load2<T>(bcx + (size_t)t * 3 * H + H + c);
        store2<T>(y + (size_t)t * H + c, C.x * rnd<T>(a0), C.y * rnd<T>(a1));
    }
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

// ----- routing: one warp per token (route_token in route.cuh) --------------------------------------
template <typename T>
__device__ void route(const T* logits, const float* bias, int ntok, int E, int k, int norm_topk,
                      float scale, int* idx, float* wts)
{
    const int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (t >= ntok) return;
    route_token<T>(logits + (size_t)t * E, bias, E, k, norm_topk, scale, idx + (size_t)t * k, wts + (size_t)t * k,
                   lane);
}

// ----- unmangled instantiations ---------------------------------------------------------------------
#define INSTANTIATE(SUF, T)                                                                                     \
extern "C" __global__ void embedding_gather_##SUF(const int* ids, const T* table, float* x, int H)             \
{ pdl_wait(); pdl_trigger(); embedding_gather<T>(ids, table, x, H); }                                          \
extern "C" __global__ void add_norm_##SUF(float* x, const T* y, int nadd, const T* w, T* h, float* h32, int H,  \
    float eps)                                                                                                  \
{ pdl_wait(); pdl_trigger(); add_norm<T>(x, y, nadd, w, h, h32, H, eps); }                                     \
extern "C" __global__ void add_norm_vec8_##SUF(float* x, const T* y, int nadd, const T* w, T* h, float* h32,      \
    int H, float eps)                                                                                           \
{                                                                                                               \
    pdl_wait();                                                                                                 \
    pdl_trigger();                                                                                              \
    switch (nadd) { /* uniform per launch; the host sends nadd > 8 to add_norm */                        \
    case 0: add_norm_vec8<T, 0>(x, y, w, h, h32, H, eps); break;                                               \
    case 1: add_norm_vec8<T, 1>(x, y, w, h, h32, H, eps); break;                                               \
    case 2: add_norm_vec8<T, 2>(x, y, w, h, h32, H, eps); break;                                               \
    case 3: add_norm_vec8<T, 3>(x, y, w, h, h32, H, eps); break;                                               \
    case 4: add_norm_vec8<T, 4>(x, y, w, h, h32, H, eps); break;                                               \
    case 5: add_norm_vec8<T, 5>(x, y, w, h, h32, H, eps); break;                                               \
    case 6: add_norm_vec8<T, 6>(x, y, w, h, h32, H, eps); break;                                               \
    case 7: add_norm_vec8<T, 7>(x, y, w, h, h32, H, eps); break;                                               \
    case 8: add_norm_vec8<T, 8>(x, y, w, h, h32, H, eps); break;                                               \
    }                                                                                                           \
}                                                                                                               \
extern "C" __global__ void embed_norm_vec8_##SUF(const int* ids, const T* table, float* x, const T* w, T* h, int H, \
    float eps)                                                                                                  \
{ pdl_wait(); pdl_trigger(); embed_norm_vec8<T>(ids, table, x, w, h, H, eps); }                                \
extern "C" __global__ void silu_mul_##SUF(const T* gu, T* act, int rows, int I) { silu_mul<T>(gu, act, rows, I); } \
extern "C" __global__ void shortconv_##SUF(const T* bcx, const T* conv_w, T* y, int ntok, int S, int H, int L) \
{ shortconv<T>(bcx, conv_w, y, ntok, S, H, L); }                                                                \
extern "C" __global__ void shortconv_tiled_##SUF(const T* bcx, const T* conv_w, T* y, int ntok, int S, int H)  \
{ shortconv_tiled<T>(bcx, conv_w, y, ntok, S, H); }                                                              \
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
{ moe_sort<false>(idx, npairs, E, BM, sorted_pair, expert_offsets, tiles, num_tiles); }
