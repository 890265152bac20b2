// Phase 1's GPU kernels: RMSNorm (every norm), RoPE, and causal GQA attention in three steps
// (scores, causal softmax, output), the plan's attention_score / causal_softmax /
// attention_output kernels. float32, written for clarity, correct for any size.
//
// Layout: activations are [batch * seq_len, features] row-major; token t of the buffer is
// position t % seq_len of sequence t / seq_len. q is [tokens, nh * hd], k and v are
// [tokens, nkv * hd] (head-major inside a row, as the projections write them). Query head h
// reads kv head h / (nh / nkv) (GQA). The score and probability matrices are
// [batch, nh, seq_len, seq_len].

#include <math.h>

#define ATT_TILE 16   // scores: 16 queries x 16 keys per block
#define OUT_DIMS 32   // output: head dims per block (x)
#define OUT_ROWS 8    // output: queries per block (y)

// Sum of v over the block; every thread gets the total. blockDim.x must be a multiple of 32.
// The leading barrier lets a second call reuse the scratch safely.
__device__ float block_sum(float v)
{
    __shared__ float warp_part[32];
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
        warp_part[threadIdx.x >> 5] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w)  // same order in every thread: same result
        total += warp_part[w];
    return total;
}

// Maximum of v over the block; every thread gets it. Same rules as block_sum.
__device__ float block_max(float v)
{
    __shared__ float warp_part[32];
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
        warp_part[threadIdx.x >> 5] = v;
    __syncthreads();
    float best = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w)
        best = fmaxf(best, warp_part[w]);
    return best;
}

// y[r, :] = w * (x[r, :] / sqrt(mean(x[r, :]^2) + eps)), one block per row. The weight
// multiplies directly (no 1 + w). y may equal x (each thread rewrites only what it read,
// after the reduction's barrier).
extern "C" __global__ void rmsnorm(const float* x, const float* w, float* y, int rows, int dim, float eps)
{
    int row = blockIdx.x;
    if (row >= rows)
        return;
    const float* xr = x + (size_t)row * dim;
    float* yr = y + (size_t)row * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        ss += xr[i] * xr[i];
    float scale = 1.0f / sqrtf(block_sum(ss) / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        yr[i] = w[i] * (xr[i] * scale);
}

// NeoX rotate_half RoPE over the full head_dim, one thread per (token, head, pair i):
//   y[i]        = x[i] cos - x[i + half] sin,   y[i + half] = x[i + half] cos + x[i] sin,
// angle = pos * inv_freq[i] in float32, inv_freq[i] = 1 / theta^(2i / head_dim) (as HF computes
// them: exponent in float32, the power rounded once to float32). y may equal x.
extern "C" __global__ void rope(const float* x, float* y, int tokens, int heads, int head_dim, int seq_len,
                                float theta)
{
    int half = head_dim / 2;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)tokens * heads * half)
        return;
    int i = (int)(idx % half);
    size_t vec = idx / half;                 // (token, head) vector index
    int pos = (int)((vec / heads) % seq_len);
    float exponent = (float)(2 * i) / (float)head_dim;
    float inv_freq = 1.0f / (float)pow((double)theta, (double)exponent);
    float angle = (float)pos * inv_freq;
    float c = cosf(angle), s = sinf(angle);
    const float* xv = x + vec * head_dim;
    float* yv = y + vec * head_dim;
    float a = xv[i], b = xv[i + half];
    yv[i] = a * c - b * s;
    yv[i + half] = b * c + a * s;
}

// scores[b, h, i, j] = scale * q[b, i, h] . k[b, j, h / group] for key j <= query i, and -inf for
// j > i (the causal mask is written, so the whole matrix is defined).
// grid (ceil(S / ATT_TILE) key tiles, ceil(S / ATT_TILE) query tiles, batch * nh),
// block (ATT_TILE keys, ATT_TILE queries). Q and K tiles are staged in shared memory over
// ATT_TILE head dims at a time; tiles wholly above the diagonal skip the dot products.
extern "C" __global__ void attention_scores(const float* q, const float* k, float* scores, int seq_len,
                                            int num_heads, int num_kv_heads, int head_dim, float scale)
{
    __shared__ float Qs[ATT_TILE][ATT_TILE + 1];  // +1: no bank conflicts on the column reads
    __shared__ float Ks[ATT_TILE][ATT_TILE + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    int bh = blockIdx.z, b = bh / num_heads, h = bh % num_heads;
    int kvh = h / (num_heads / num_kv_heads);
    int i0 = blockIdx.y * ATT_TILE, j0 = blockIdx.x * ATT_TILE;
    int i = i0 + ty, j = j0 + tx;
    size_t q_stride = (size_t)num_heads * head_dim, k_stride = (size_t)num_kv_heads * head_dim;
    const float* q_seq = q + (size_t)b * seq_len * q_stride + (size_t)h * head_dim;
    const float* k_seq = k + (size_t)b * seq_len * k_stride + (size_t)kvh * head_dim;

    float acc = 0.0f;
    if (j0 <= i0 + ATT_TILE - 1) {  // same for the whole block, so the barriers are safe
        for (int d0 = 0; d0 < head_dim; d0 += ATT_TILE) {
            int d = d0 + tx;
            int key = j0 + ty;  // Ks row ty = key j0 + ty: a warp reads along head dims (coalesced)
            Qs[ty][tx] = (i < seq_len && d < head_dim) ? q_seq[(size_t)i * q_stride + d] : 0.0f;
            Ks[ty][tx] = (key < seq_len && d < head_dim) ? k_seq[(size_t)key * k_stride + d] : 0.0f;
            __syncthreads();
            for (int dd = 0; dd < ATT_TILE; ++dd)
                acc += Qs[ty][dd] * Ks[tx][dd];
            __syncthreads();
        }
    }
    if (i < seq_len && j < seq_len)
        scores[((size_t)bh * seq_len + i) * seq_len + j] = (j <= i) ? acc * scale : -INFINITY;
}

// Row-wise causal softmax, one block per row r of [batch * nh * S, S]; the row's query position
// is i = r % S. probs[j] = exp(s[j] - max) / sum over keys j <= i, and 0 for j > i. Entries above
// the diagonal are never read. probs may equal scores.
extern "C" __global__ void causal_softmax(const float* scores, float* probs, int rows, int seq_len)
{
    int row = blockIdx.x;
    if (row >= rows)
        return;
    int last = row % seq_len;  // the last key this query may see
    const float* s = scores + (size_t)row * seq_len;
    float* p = probs + (size_t)row * seq_len;
    float m = -INFINITY;
    for (int j = threadIdx.x; j <= last; j += blockDim.x)
        m = fmaxf(m, s[j]);
    m = block_max(m);
    float sum = 0.0f;
    for (int j = threadIdx.x; j <= last; j += blockDim.x)
        sum += expf(s[j] - m);
    sum = block_sum(sum);
    for (int j = threadIdx.x; j < seq_len; j += blockDim.x)
        p[j] = (j <= last) ? expf(s[j] - m) / sum : 0.0f;
}

// out[b, i, h * hd + d] = sum over keys j <= i of probs[b, h, i, j] * v[b, j, (h / group) * hd + d].
// grid (ceil(hd / OUT_DIMS), ceil(S / OUT_ROWS), batch * nh), block (OUT_DIMS, OUT_ROWS): a warp
// shares one query (probs read as a broadcast) and reads V along head dims (coalesced).
extern "C" __global__ void attention_output(const float* probs, const float* v, float* out, int seq_len,
                                            int num_heads, int num_kv_heads, int head_dim)
{
    int d = blockIdx.x * OUT_DIMS + threadIdx.x;
    int i = blockIdx.y * OUT_ROWS + threadIdx.y;
    int bh = blockIdx.z, b = bh / num_heads, h = bh % num_heads;
    if (d >= head_dim || i >= seq_len)
        return;
    int kvh = h / (num_heads / num_kv_heads);
    size_t v_stride = (size_t)num_kv_heads * head_dim;
    const float* p_row = probs + ((size_t)bh * seq_len + i) * seq_len;
    const float* v_col = v + (size_t)b * seq_len * v_stride + (size_t)kvh * head_dim + d;
    float acc = 0.0f;
    for (int j = 0; j <= i; ++j)
        acc += p_row[j] * v_col[(size_t)j * v_stride];
    out[((size_t)b * seq_len + i) * num_heads * head_dim + (size_t)h * head_dim + d] = acc;
}
