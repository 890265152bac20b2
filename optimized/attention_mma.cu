// Causal GQA attention forward on tensor cores for bf16, head_dim 64 (FlashAttention-2 style).
// Same contract as attention.cu: q [B, nh, S, 64], k and v [B, nkv, S, 64] (head-major, post
// q/k-norm and RoPE), o [B*S, nh*64] token-major for the out_proj GEMM, scale = 64 ** -0.5, query
// s sees keys 0..s; any S >= 1 (tails zero-filled and masked, nothing read or written past S).
//
// Grid (nh, B, ceil(S/64)); block 4 warps = one query head's tile of 64 query rows, 16 per warp.
// The query tile is the slowest grid index, counted down, so the longest causal rows (the most key
// tiles) start first and the short ones fill the tail of the launch; the G query heads that share
// a kv head are neighbouring blocks, so a K/V tile comes from L2 for all but the first of them.
// K/V tiles of 64 keys pass through shared memory, double-buffered with cp.async (the next tile
// loads while this one is multiplied). Rows are padded to 72 bf16 (144 bytes): the 8 row addresses
// of one ldmatrix phase fall on 8 distinct 16-byte bank groups, so fragment loads are conflict-free.
// Per warp and key tile: S = Q K^T with mma.sync m16n8k16 (bf16 in, fp32 accumulators; Q fragments
// stay in registers for the whole block), the causal/tail mask on the diagonal tile only (the tiles
// left of it are entirely visible, and only the diagonal tile can hold keys >= S), online softmax in
// registers in log2 units (the scale * log2(e) folded into one FMA before exp2), P rounded to bf16
// as the A operand of O += P V (V fragments by ldmatrix.trans), as sdpa's flash kernels do. The row
// sums add the unrounded fp32 P, each thread its own columns, reduced over the quad at the end.
// The output goes through the warp's own rows of the Q tile in shared memory so that each row
// leaves as 16-byte stores.
#include "common.cuh"

#define AM_HD 64       // head_dim (the real model's)
#define AM_QT 64       // query rows per block, 16 per warp
#define AM_KT 64       // keys per shared-memory tile
#define AM_LD 72       // shared row stride in bf16 (144 bytes, see above)
#define AM_THREADS 128

__device__ __forceinline__ void am_ldsm_x4(unsigned (&r)[4], const bf16* p)
{
    unsigned a = smem_addr(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void am_ldsm_x4_trans(unsigned (&r)[4], const bf16* p)
{
    unsigned a = smem_addr(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ unsigned am_pack(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo: the lower column
    return *reinterpret_cast<unsigned*>(&v);
}

// Rows [r0, r0 + 64) of a head's [S, 64] matrix into a padded shared tile; rows >= S zero-filled.
__device__ __forceinline__ void am_load_tile(bf16* sm, const bf16* g, int r0, int S)
{
#pragma unroll
    for (int i = threadIdx.x; i < AM_KT * (AM_HD / 8); i += AM_THREADS) {
        const int r = i >> 3, c = (i & 7) * 8, row = r0 + r;
        const bool ok = row < S;
        cp_async16(sm + r * AM_LD + c, g + (size_t)(ok ? row : 0) * AM_HD + c, ok);
    }
}

// __launch_bounds__(128, 4): 128 registers (a 16-byte spill), 4 blocks = 16 warps per SM. On an H100
// against the unbounded 154 registers, 3 blocks per SM: 50.9 vs 55.0 us at 8 x 512.
extern "C" __global__ void __launch_bounds__(AM_THREADS, 4) attention_mma_bf16_hd64(
    const bf16* q, const bf16* k, const bf16* v, bf16* o, int S, int nh, int nkv, float scale)
{
    __shared__ __align__(128) bf16 Qs[AM_QT * AM_LD];
    __shared__ __align__(128) bf16 Ks[2][AM_KT * AM_LD];
    __shared__ __align__(128) bf16 Vs[2][AM_KT * AM_LD];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;  // the MMA fragments' row group and thread-in-group
    const int head = blockIdx.x, b = blockIdx.y, kvh = head / (nh / nkv);
    const int qt = gridDim.z - 1 - blockIdx.z, q0 = qt * AM_QT;
    const bf16* qg = q + ((size_t)b * nh + head) * S * AM_HD;
    const bf16* kg = k + ((size_t)b * nkv + kvh) * S * AM_HD;
    const bf16* vg = v + ((size_t)b * nkv + kvh) * S * AM_HD;
    const float sl2 = scale * 1.4426950408889634f;  // scores to log2 units

    am_load_tile(Qs, qg, q0, S);
    am_load_tile(Ks[0], kg, 0, S);
    am_load_tile(Vs[0], vg, 0, S);
    cp_async_commit();

    // a warp whose 16 rows all lie at or past S only helps load (S not a multiple of 64)
    const bool active = q0 + warp * 16 < S;
    const int ntiles = qt + 1;  // key tiles 0..qt: AM_KT == AM_QT, so tile qt is the diagonal one
    unsigned qf[4][4];
    float acc[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // rows g and g + 8, raw score units

    for (int kt = 0; kt < ntiles; ++kt) {
        if (kt + 1 < ntiles) {
            am_load_tile(Ks[(kt + 1) & 1], kg, (kt + 1) * AM_KT, S);
            am_load_tile(Vs[(kt + 1) & 1], vg, (kt + 1) * AM_KT, S);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (active) {
            if (kt == 0) {
#pragma unroll
                for (int kk = 0; kk < 4; ++kk)
                    am_ldsm_x4(qf[kk], Qs + (warp * 16 + (lane & 15)) * AM_LD + kk * 16 + (lane >> 4) * 8);
            }
            const bf16* Kb = Ks[kt & 1];
            const bf16* Vb = Vs[kt & 1];
            // S = Q K^T: 8 column tiles of 8 keys; one ldmatrix.x4 gives the B fragments of 2 k-steps
            float s[8][4];
#pragma unroll
            for (int j = 0; j < 8; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) s[j][e] = 0.f;
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    unsigned kb[4];
                    am_ldsm_x4(kb, Kb + (j * 8 + (lane & 7)) * AM_LD + h * 32 + (lane >> 3) * 8);
                    mma_bf16(s[j], qf[2 * h], kb[0], kb[1]);
                    mma_bf16(s[j], qf[2 * h + 1], kb[2], kb[3]);
                }
            }
            if (kt == qt) {  // the diagonal tile: keys after the row, and keys >= S, are masked
#pragma unroll
                for (int j = 0; j < 8; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int key = j * 8 + 2 * t + (e & 1), row = warp * 16 + g + (e >> 1) * 8;
                        if (key > row || q0 + key >= S) s[j][e] = -INFINITY;
                    }
            }
            // online softmax, per row half h (row g + 8h): elements e = 2h, 2h + 1 of each tile
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float mx = m[h];
#pragma unroll
                for (int j = 0; j < 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * h], s[j][2 * h + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                // every row sees key q0 of its diagonal tile and all keys of the others, so mx is
                // finite; the guard keeps a fully masked row at p = 0 instead of NaN regardless
                const float ms = mx == -INFINITY ? 0.f : mx * sl2;
                const float alpha = exp2f(m[h] * sl2 - ms);  // m = -inf on the first tile: 0
                m[h] = mx;
                l[h] *= alpha;
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    acc[j][2 * h] *= alpha;
                    acc[j][2 * h + 1] *= alpha;
                    s[j][2 * h] = exp2f(fmaf(s[j][2 * h], sl2, -ms));
                    s[j][2 * h + 1] = exp2f(fmaf(s[j][2 * h + 1], sl2, -ms));
                    l[h] += s[j][2 * h] + s[j][2 * h + 1];
                }
            }
            // O += P V: k-steps of 16 keys; P's C fragments are the A fragment's layout already
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                const unsigned pa[4] = {am_pack(s[2 * kk][0], s[2 * kk][1]), am_pack(s[2 * kk][2], s[2 * kk][3]),
                                        am_pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                        am_pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
                for (int dp = 0; dp < 4; ++dp) {
                    unsigned vb[4];
                    am_ldsm_x4_trans(vb, Vb + (kk * 16 + (lane & 15)) * AM_LD + dp * 16 + (lane >> 4) * 8);
                    mma_bf16(acc[2 * dp], pa, vb[0], vb[1]);
                    mma_bf16(acc[2 * dp + 1], pa, vb[2], vb[3]);
                }
            }
        }
        __syncthreads();  // the buffer just read is the one the next iteration refills
    }

    if (!active) return;
    // normalize, stage the warp's 16 rows in its own rows of Qs (read only by this warp), store rows
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
        const float inv = 1.0f / l[h];
        bf16* row = Qs + (warp * 16 + g + h * 8) * AM_LD + 2 * t;
#pragma unroll
        for (int j = 0; j < 8; ++j)
            *reinterpret_cast<unsigned*>(row + j * 8) = am_pack(acc[j][2 * h] * inv, acc[j][2 * h + 1] * inv);
    }
    __syncwarp();
#pragma unroll
    for (int i = lane; i < 16 * (AM_HD / 8); i += 32) {
        const int r = i >> 3, c = (i & 7) * 8, s_ = q0 + warp * 16 + r;
        if (s_ < S)
            *reinterpret_cast<uint4*>(o + ((size_t)b * S + s_) * nh * AM_HD + (size_t)head * AM_HD + c) =
                *reinterpret_cast<const uint4*>(Qs + (warp * 16 + r) * AM_LD + c);
    }
}

