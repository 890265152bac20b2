// The optimized engine's generation kernels: one new token per sequence against the caches
// transformers keeps (K/V per attention layer, conv state per ShortConv layer); T = float or bf16, math in float, rounded to T where
// HF rounds (rnd<T>, identity in fp32) exactly as the prefill kernels in elementwise.cu do, so a
// decode step in fp32 computes what the prefill forward computes for the same position.
//
// Caches (optimized/decode.py allocates them):
//   conv state per ShortConv layer [B, L-1, H] in T: the last L-1 columns of B*x, oldest first;
//   K and V per attention layer [B, nkv, Lmax, hd] in T: post-norm, post-RoPE K and raw V;
//   lengths [B] int32: positions already in the cache. The new token of sequence b sits at
//   position lengths[b]; the step's last launch (argmax_rows with `advance`, or advance_lengths)
//   moves it on, so a captured graph of the whole step replays step after step.
// The kernels of the decode step wait (pdl_wait, common.cuh) before anything else, so the engine
// may launch them with programmatic dependent launch: their launch latency overlaps the kernel
// before them.
#include "common.cuh"

#define DKT 64        // keys per shared-memory tile of decode_attention; also the smallest split
#define DMAXG 16      // most query heads per kv head (GQA group) one block serves
#define DTHREADS 256  // decode_attention's block size (the launcher uses exactly this)
#define DACC ((DMAXG * 64 + DTHREADS - 1) / DTHREADS)  // (head, dim) outputs per thread, hd <= 64

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// ----- ShortConv, one token per sequence ---------------------------------------------------------
// bcx [B, 3H] (in_proj output: B | C | x), conv_w [H, L], state [B, L-1, H], y [B, H]; the
// arithmetic is common.cuh's conv_step_channel. One thread per (b, c): it alone reads and writes
// its state column.
template <typename T>
__device__ void conv_step(const T* bcx, const T* conv_w, T* state, T* y, int B, int H, int L)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)B * H) return;
    const int b = (int)(i / H), c = (int)(i % H);
    const T* r = bcx + (size_t)b * 3 * H;
    conv_step_channel<T>(to_f<T>(r[c]), to_f<T>(r[H + c]), to_f<T>(r[2 * H + c]), conv_w,
                         state + (size_t)b * (L - 1) * H + c, y + i, c, H, L);
}

// ----- conv state after a prefill of right-padded prompts ------------------------------------------
// bcx [B*S, 3H] (the prefill's in_proj output), lengths [B] (real tokens of each prompt, <= S).
// state[b, j] = B*x of position lengths[b] - (L-1) + j, zero before the prompt's start (prompts
// shorter than L-1 tokens). Padding positions are never read.
template <typename T>
__device__ void conv_state_fill(const T* bcx, const int* lengths, T* state, int B, int S, int H, int L)
{
    const int W = L - 1;
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)B * W * H) return;
    const int c = (int)(i % H), j = (int)((i / H) % W), b = (int)(i / ((size_t)W * H));
    const int pos = lengths[b] - W + j;
    float bx = 0.f;
    if (pos >= 0) {
        const T* r = bcx + ((size_t)b * S + pos) * 3 * H;
        bx = rnd<T>(to_f<T>(r[c]) * to_f<T>(r[2 * H + c]));
    }
    state[i] = from_f<T>(bx);
}

// qkv [B, (nh + 2 nkv) hd]; one warp per (sequence, head slot). q [B, nh, hd]; k and v are
// appended to the caches at [b, head, lengths[b], :]. A position past the cache (the host
// refuses that before launching) writes nothing to the caches.
template <typename T>
__device__ void qk_norm_rope_step(const T* qkv, const T* qw, const T* kw, const int* lengths, T* q, T* kc, T* vc,
                                  int B, int nh, int nkv, int hd, int Lmax, float eps, float theta)
{
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    const int slots = nh + 2 * nkv;
    if (warp >= B * slots) return;
    const int b = warp / slots, slot = warp % slots;
    const int pos = lengths[b];
    const T* src = qkv + (size_t)b * slots * hd + (size_t)slot * hd;
    if (slot >= nh) {  // k or v: into the cache
        if (pos >= Lmax) return;
        const bool is_v = slot >= nh + nkv;
        const int head = is_v ? slot - nh - nkv : slot - nh;
        T* dst = (is_v ? vc : kc) + (((size_t)b * nkv + head) * Lmax + pos) * hd;
        if (is_v) {
            for (int d = lane; d < hd; d += 32) dst[d] = src[d];
        } else {
            norm_rope_head<T>(src, kw, dst, hd, eps, theta, pos, lane);
        }
        return;
    }
    norm_rope_head<T>(src, qw, q + ((size_t)b * nh + slot) * hd, hd, eps, theta, pos, lane);
}

// ----- attention of one query per (sequence, head) over its cache (flash-decoding) -------------------
// Keys 0..lengths[b] (the new token's included). Pass 1: grid (nsplit, nkv, B), DTHREADS threads;
// block (split, kvh, b) serves the G = nh/nkv query heads of kv head kvh over its share of the keys:
// chunk = max(DKT, ceil(n / nsplit)) keys from split * chunk (blocks past the end do nothing).
// It walks its chunk in tiles of DKT keys (K, V as float in shared memory), online softmax in
// fp32 per head, and writes the unnormalised accumulator and (max, sum) of its chunk:
// part_o [B, nh, nsplit, HD], part_ml [B, nh, nsplit, 2] (scores are in log2 units: q carries
// scale * log2(e)). Pass 2 (decode_attention_combine) merges the used chunks into o [B, nh * HD].
// With nsplit 1 (batch 64: 512 (sequence, kv head) blocks already fill the GPU) pass 1 writes o itself,
// with the combine's arithmetic, and pass 2 is not launched: one dependent launch fewer per attention
// layer (the combine took 6.3 us per launch in the batch-64 decode step on an H100).
// With `step.qkv` (qk_norm_rope_step folded in: one dependent launch fewer per attention layer) the
// queries come straight from the qkv projection [B, (nh + 2 nkv) hd]: every split norms and rotates its
// G query heads itself (norm_rope_head, as qk_norm_rope_step: the same values), and the split holding
// the new position writes its k (normed, rotated) and v into the caches before it loads its keys; no
// other split reads that position. Else q holds the normed, rotated queries.
template <typename T>
struct QkvStep {
    const T* qkv;
    const T* qw;
    const T* kw;
    float eps, theta;
};
template <typename T, int HD>
__device__ void decode_attention_partial(const T* q, T* kc, T* vc, const int* lengths, float* part_o,
                                         float* part_ml, T* o, int nh, int nkv, int Lmax, int nsplit, float scale,
                                         QkvStep<T> step)
{
    __shared__ float Ks[DKT * (HD + 1)];  // padded rows: thread j reads row j, no bank conflicts
    __shared__ float Vs[DKT * HD];
    __shared__ float qs[DMAXG * HD];
    __shared__ float sc[DMAXG * DKT];     // scores, then probabilities, of the tile
    __shared__ float m_s[DMAXG], l_s[DMAXG], alpha_s[DMAXG];
    const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    const int G = nh / nkv;
    const int n = min(lengths[b] + 1, Lmax);
    const int chunk = max(DKT, (n + nsplit - 1) / nsplit);
    const int start = split * chunk;
    if (start >= n) return;  // the same for the whole block
    const int end = min(n, start + chunk);
    const float LOG2E = 1.4426950408889634f;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, nwarps = DTHREADS / 32;

    if (step.qkv) {
        __shared__ T qn[DMAXG * HD];
        const int pos = lengths[b];
        const T* row = step.qkv + (size_t)b * (nh + 2 * nkv) * HD;
        for (int g = warp; g < G; g += nwarps)
            norm_rope_head<T>(row + (size_t)(kvh * G + g) * HD, step.qw, qn + g * HD, HD, step.eps, step.theta, pos,
                              lane);
        if (pos >= start && pos < end) {  // the new token's k and v, read by this split's last tile below
            const size_t at = (((size_t)b * nkv + kvh) * Lmax + pos) * HD;
            if (warp == 0)
                norm_rope_head<T>(row + (size_t)(nh + kvh) * HD, step.kw, kc + at, HD, step.eps, step.theta, pos, lane);
            else if (warp == 1)
                for (int d = lane; d < HD; d += 32) vc[at + d] = row[(size_t)(nh + nkv + kvh) * HD + d];
        }
        __syncthreads();
        for (int i = tid; i < G * HD; i += DTHREADS) qs[i] = to_f<T>(qn[i]) * scale * LOG2E;
    } else {
        for (int i = tid; i < G * HD; i += DTHREADS) {
            const int g = i / HD, d = i % HD;
            qs[i] = to_f<T>(q[((size_t)b * nh + kvh * G + g) * HD + d]) * scale * LOG2E;
        }
    }
    if (tid < G) { m_s[tid] = -INFINITY; l_s[tid] = 0.f; }
    float acc[DACC];
#pragma unroll
    for (int r = 0; r < DACC; ++r) acc[r] = 0.f;

    const T* kp = kc + ((size_t)b * nkv + kvh) * Lmax * HD;
    const T* vp = vc + ((size_t)b * nkv + kvh) * Lmax * HD;
    for (int k0 = start; k0 < end; k0 += DKT) {
        const int nk = min(DKT, end - k0);
        __syncthreads();  // the previous tile's readers are done (first tile: qs, m_s, l_s are set)
        for (int i = tid; i < DKT * HD; i += DTHREADS) {
            const int j = i / HD, d = i % HD;
            const bool ok = j < nk;  // never read past the chunk: those slots may hold anything
            Ks[j * (HD + 1) + d] = ok ? to_f<T>(kp[(size_t)(k0 + j) * HD + d]) : 0.f;
            Vs[i] = ok ? to_f<T>(vp[(size_t)(k0 + j) * HD + d]) : 0.f;
        }
        __syncthreads();
        for (int i = tid; i < G * DKT; i += DTHREADS) {
            const int g = i / DKT, j = i % DKT;
            float dot = 0.f;
#pragma unroll
            for (int d = 0; d < HD; ++d) dot += qs[g * HD + d] * Ks[j * (HD + 1) + d];
            sc[i] = j < nk ? dot : -INFINITY;
        }
        __syncthreads();
        for (int g = warp; g < G; g += nwarps) {  // one warp per head: running max and sum
            float mx = -INFINITY;
            for (int j = lane; j < DKT; j += 32) mx = fmaxf(mx, sc[g * DKT + j]);
            mx = warp_max(mx);
            const float m_old = m_s[g];
            const float m_new = fmaxf(m_old, mx);  // finite: the tile has at least one key
            float sum = 0.f;
            for (int j = lane; j < DKT; j += 32) {
                const float p = exp2f(sc[g * DKT + j] - m_new);  // -inf (no key) -> 0
                sc[g * DKT + j] = p;
                sum += p;
            }
            sum = warp_sum(sum);
            if (lane == 0) {
                const float a = exp2f(m_old - m_new);  // first tile: exp2(-inf) = 0
                alpha_s[g] = a;
                l_s[g] = l_s[g] * a + sum;
                m_s[g] = m_new;
            }
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < DACC; ++r) {  // thread owns (head g, dim d) outputs i = tid + r * DTHREADS
            const int i = tid + r * DTHREADS;
            if (i < G * HD) {
                const int g = i / HD, d = i % HD;
                float a = acc[r] * alpha_s[g];
                for (int j = 0; j < nk; ++j) a += sc[g * DKT + j] * Vs[j * HD + d];
                acc[r] = a;
            }
        }
    }
    if (nsplit == 1) {  // the whole sequence in this block: o as the combine would leave it, no combine launch
#pragma unroll
        for (int r = 0; r < DACC; ++r) {
            const int i = tid + r * DTHREADS;
            if (i < G * HD) {
                const int g = i / HD, d = i % HD;
                o[((size_t)b * nh + kvh * G + g) * HD + d] = from_f<T>(acc[r] * (1.0f / l_s[g]));
            }
        }
        return;
    }
    const size_t base = ((size_t)b * nh + kvh * G) * nsplit + split;  // row of head g: base + g * nsplit
#pragma unroll
    for (int r = 0; r < DACC; ++r) {
        const int i = tid + r * DTHREADS;
        if (i < G * HD) {
            const int g = i / HD, d = i % HD;
            part_o[(base + (size_t)g * nsplit) * HD + d] = acc[r];
        }
    }
    if (tid < G) {
        part_ml[(base + (size_t)tid * nsplit) * 2] = m_s[tid];
        part_ml[(base + (size_t)tid * nsplit) * 2 + 1] = l_s[tid];
    }
}

// One warp per (b, head): o = sum_s acc_s * 2^(m_s - M) / sum_s l_s * 2^(m_s - M) over the chunks
// pass 1 wrote (the same chunk arithmetic decides which).
template <typename T>
__device__ void decode_attention_combine(const float* part_o, const float* part_ml, const int* lengths, T* o,
                                         int B, int nh, int hd, int Lmax, int nsplit)
{
    const int w = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (w >= B * nh) return;
    const int b = w / nh, head = w % nh;  // w = b * nh + head: the partials' row
    const int n = min(lengths[b] + 1, Lmax);
    const int chunk = max(DKT, (n + nsplit - 1) / nsplit);
    const int used = (n + chunk - 1) / chunk;
    const float* ml = part_ml + (size_t)w * nsplit * 2;
    float M = -INFINITY;
    for (int s = 0; s < used; ++s) M = fmaxf(M, ml[2 * s]);
    float L = 0.f;
    for (int s = 0; s < used; ++s) L += ml[2 * s + 1] * exp2f(ml[2 * s] - M);
    const float inv = 1.0f / L;
    for (int d = lane; d < hd; d += 32) {
        float a = 0.f;
        for (int s = 0; s < used; ++s) a += part_o[((size_t)w * nsplit + s) * hd + d] * exp2f(ml[2 * s] - M);
        o[((size_t)b * nh + head) * hd + d] = from_f<T>(a * inv);
    }
}

// ----- unmangled instantiations ---------------------------------------------------------------------
#define INSTANTIATE(SUF, T)                                                                                    \
extern "C" __global__ void conv_step_##SUF(const T* bcx, const T* conv_w, T* state, T* y, int B, int H, int L) \
{ pdl_wait(); pdl_trigger(); conv_step<T>(bcx, conv_w, state, y, B, H, L); }                                 \
extern "C" __global__ void conv_state_fill_##SUF(const T* bcx, const int* lengths, T* state, int B, int S,    \
    int H, int L)                                                                                              \
{ conv_state_fill<T>(bcx, lengths, state, B, S, H, L); }                                                       \
extern "C" __global__ void qk_norm_rope_step_##SUF(const T* qkv, const T* qw, const T* kw, const int* lengths, \
    T* q, T* kc, T* vc, int B, int nh, int nkv, int hd, int Lmax, float eps, float theta)                      \
{                                                                                                              \
    pdl_wait();                                                                                                \
    pdl_trigger();                                                                                             \
    qk_norm_rope_step<T>(qkv, qw, kw, lengths, q, kc, vc, B, nh, nkv, hd, Lmax, eps, theta);                   \
}                                                                                                              \
extern "C" __global__ void decode_attention_combine_##SUF(const float* part_o, const float* part_ml,          \
    const int* lengths, T* o, int B, int nh, int hd, int Lmax, int nsplit)                                     \
{ pdl_wait(); pdl_trigger(); decode_attention_combine<T>(part_o, part_ml, lengths, o, B, nh, hd, Lmax, nsplit); }

#define INSTANTIATE_ATTN(SUF, T, HD)                                                                           \
extern "C" __global__ void __launch_bounds__(DTHREADS) decode_attention_##SUF##_hd##HD(                       \
    const T* q, T* kc, T* vc, const int* lengths, float* part_o, float* part_ml, T* o, int nh, int nkv,        \
    int Lmax, int nsplit, float scale, const T* qkv, const T* qw, const T* kw, float eps, float theta)          \
{                                                                                                              \
    pdl_wait();                                                                                                \
    pdl_trigger();                                                                                             \
    decode_attention_partial<T, HD>(q, kc, vc, lengths, part_o, part_ml, o, nh, nkv, Lmax, nsplit, scale,      \
                                    {qkv, qw, kw, eps, theta});                                                \
}

INSTANTIATE(f32, float)
INSTANTIATE(bf16, bf16)
INSTANTIATE_ATTN(f32, float, 16)
INSTANTIATE_ATTN(f32, float, 32)
INSTANTIATE_ATTN(f32, float, 64)
INSTANTIATE_ATTN(bf16, bf16, 16)
INSTANTIATE_ATTN(bf16, bf16, 32)
INSTANTIATE_ATTN(bf16, bf16, 64)

// lengths[b] += 1: the step's last launch, so a replayed graph moves every sequence on by itself.
extern "C" __global__ void advance_lengths(int* lengths, int B)
{
    pdl_wait();
    pdl_trigger();
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b < B) lengths[b] += 1;
}

// ----- greedy choice on the device: ids[r] = argmax_c logits[r, c] ------------------------------------
// One block per row (fp32 logits, any V). The lowest index wins ties, as numpy's argmax; NaN never
// wins (a NaN row gives the first finite maximum, or 0). A greedy decode step then moves B ints to
// the host instead of B x V floats (16.8 MB at batch 64: ~3.6 ms of a 10.9 ms step on an H100).
#define ARGMAX_THREADS 1024
__device__ __forceinline__ bool argmax_better(float v, int i, float bv, int bi)
{
    return v > bv || (v == bv && i < bi);
}

// The best (value, index) of this thread's values, reduced over the block; thread 0 gets it.
__device__ void argmax_block(float& bv, int& bi)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    for (int off = 16; off; off >>= 1) {
        float ov = __shfl_down_sync(0xffffffffu, bv, off);
        int oi = __shfl_down_sync(0xffffffffu, bi, off);
        if (argmax_better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) { sv[warp] = bv; si[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        bv = lane < nw ? sv[lane] : -INFINITY;
        bi = lane < nw ? si[lane] : 0x7fffffff;
        for (int off = 16; off; off >>= 1) {
            float ov = __shfl_down_sync(0xffffffffu, bv, off);
            int oi = __shfl_down_sync(0xffffffffu, bi, off);
            if (argmax_better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
        }
    }
}

// grid (nsplit, B): block (s, r) takes columns [s * V / nsplit, (s + 1) * V / nsplit) of row r. With
// nsplit > 1 each block leaves its best in part_v / part_i and the last block of a row to finish
// (count[r], which it resets to 0 for the next launch) reduces them: one launch, V spread over many
// SMs (a single 1024-thread block took 16 us for one 65,536-logit row, 1 % of a batch-1 step).
// advance (optional): lengths, moved on by one for row r where its id is written: the decode step's
// advance_lengths launch folded into the argmax (one dependent launch fewer per step).
extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS)
    argmax_rows(const float* logits, int* ids, int V, float* part_v, int* part_i, unsigned* count, int nsplit,
                int* advance)
{
    __shared__ bool last;
    pdl_wait();
    pdl_trigger();
    const int r = blockIdx.y, s = blockIdx.x;
    const float* row = logits + (size_t)r * V;
    const int c0 = (int)((long long)V * s / nsplit), c1 = (int)((long long)V * (s + 1) / nsplit);
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
        float v = row[c];
        if (argmax_better(v, c, bv, bi)) { bv = v; bi = c; }  // NaN compares false: skipped
    }
    argmax_block(bv, bi);
    if (nsplit == 1) {
        if (threadIdx.x == 0) {
            ids[r] = bi == 0x7fffffff ? 0 : bi;
            if (advance) advance[r] += 1;
        }
        return;
    }
    if (threadIdx.x == 0) {
        part_v[r * nsplit + s] = bv;
        part_i[r * nsplit + s] = bi;
        __threadfence();
        last = atomicAdd(&count[r], 1u) == (unsigned)nsplit - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    bv = -INFINITY;
    bi = 0x7fffffff;
    for (int j = threadIdx.x; j < nsplit; j += blockDim.x) {
        const float v = __ldcg(part_v + r * nsplit + j);  // L2: other blocks wrote them
        const int i = __ldcg(part_i + r * nsplit + j);
        if (argmax_better(v, i, bv, bi)) { bv = v; bi = i; }
    }
    argmax_block(bv, bi);
    if (threadIdx.x == 0) {
        ids[r] = bi == 0x7fffffff ? 0 : bi;
        count[r] = 0;
        if (advance) advance[r] += 1;
    }
}
