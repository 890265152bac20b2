// Fused causal GQA attention, flash-style (online softmax, no score matrix in memory).
// q [B, nh, S, HD], k and v [B, nkv, S, HD] (head-major, post q/k-norm and RoPE: see
// elementwise.cu qk_norm_rope), o [B*S, nh*HD] token-major for the out_proj GEMM.
// Grid (ceil(S/QT), nkv, B); block G*QT threads, G = nh/nkv: the G query heads that share a kv
// head share one block, so each K/V tile is read from memory once for all of them. Thread
// (g, qi) owns query row s = tile*QT + qi of head kvh*G + g: q and the output accumulator live in
// registers, K and V tiles of KT keys in shared memory as float (broadcast reads: every thread of
// a warp reads the same key row). Scores, softmax and P.V in fp32 (as sdpa's accumulators).
#include "common.cuh"

#define QT 32
#define KT 32

template <typename T, int HD>
__device__ void attention_fwd(const T* q, const T* k, const T* v, T* o, int S, int nh, int nkv, float scale)
{
    __shared__ __align__(16) float Ks[KT * HD];
    __shared__ __align__(16) float Vs[KT * HD];
    const int G = blockDim.x / QT;
    const int g = threadIdx.x / QT, qi = threadIdx.x % QT;
    const int b = blockIdx.z, kvh = blockIdx.y, head = kvh * G + g;
    const int s = blockIdx.x * QT + qi;
    const float LOG2E = 1.4426950408889634f;

    float qr[HD], acc[HD];
    const T* qp = q + (((size_t)b * nh + head) * S + min(s, S - 1)) * HD;
#pragma unroll
    for (int d = 0; d < HD; ++d) { qr[d] = to_f<T>(qp[d]) * scale * LOG2E; acc[d] = 0.f; }
    float m = -INFINITY, l = 0.f;

    const int kend = min(S, (int)(blockIdx.x + 1) * QT);  // keys the block's last query can see
    const T* kp = k + ((size_t)b * nkv + kvh) * S * HD;
    const T* vp = v + ((size_t)b * nkv + kvh) * S * HD;
    for (int k0 = 0; k0 < kend; k0 += KT) {
        __syncthreads();
        for (int i = threadIdx.x; i < KT * HD; i += blockDim.x) {
            int key = k0 + i / HD;
            bool ok = key < S;
            Ks[i] = ok ? to_f<T>(kp[(size_t)k0 * HD + i]) : 0.f;
            Vs[i] = ok ? to_f<T>(vp[(size_t)k0 * HD + i]) : 0.f;
        }
        __syncthreads();
        float sc[KT];
        float mx = m;
#pragma unroll
        for (int j = 0; j < KT; ++j) {
            const float4* kr = reinterpret_cast<const float4*>(Ks + j * HD);
            float dot = 0.f;
#pragma unroll
            for (int d4 = 0; d4 < HD / 4; ++d4) {
                float4 kv = kr[d4];
                dot += qr[4 * d4] * kv.x + qr[4 * d4 + 1] * kv.y + qr[4 * d4 + 2] * kv.z + qr[4 * d4 + 3] * kv.w;
            }
            int key = k0 + j;
            sc[j] = (key <= s && key < S) ? dot : -INFINITY;
            mx = fmaxf(mx, sc[j]);
        }
        const float alpha = exp2f(m - mx);  // m = -inf on the first tile: alpha = 0
        l *= alpha;
#pragma unroll
        for (int d = 0; d < HD; ++d) acc[d] *= alpha;
#pragma unroll
        for (int j = 0; j < KT; ++j) {
            float p = exp2f(sc[j] - mx);
            l += p;
            const float4* vr = reinterpret_cast<const float4*>(Vs + j * HD);
#pragma unroll
            for (int d4 = 0; d4 < HD / 4; ++d4) {
                float4 vv = vr[d4];
                acc[4 * d4] += p * vv.x;
                acc[4 * d4 + 1] += p * vv.y;
                acc[4 * d4 + 2] += p * vv.z;
                acc[4 * d4 + 3] += p * vv.w;
            }
        }
        m = mx;
    }
    if (s < S) {
        T* op = o + ((size_t)b * S + s) * nh * HD + (size_t)head * HD;
        const float inv = 1.0f / l;
#pragma unroll
        for (int d = 0; d < HD; ++d) op[d] = from_f<T>(acc[d] * inv);
    }
}

#define INSTANTIATE(SUF, T, HD)                                                                         \
extern "C" __global__ void __launch_bounds__(256) attention_##SUF##_hd##HD(                            \
    const T* q, const T* k, const T* v, T* o, int S, int nh, int nkv, float scale)                     \
{ attention_fwd<T, HD>(q, k, v, o, S, nh, nkv, scale); }

INSTANTIATE(f32, float, 16)
INSTANTIATE(f32, float, 32)
INSTANTIATE(f32, float, 64)
INSTANTIATE(bf16, bf16, 16)
INSTANTIATE(bf16, bf16, 32)
INSTANTIATE(bf16, bf16, 64)
