// Grouped MoE GEMMs: one launch per projection over all experts.
//
// Rows are (token, slot) pairs sorted by expert (elementwise.cu moe_sort_pairs); the tile table
// tiles[3*i] = {expert, first row, end row} says which expert and rows block x = i works on, so
// the grid is sized on the host from an upper bound (pairs/BM + E tiles) and blocks past
// *num_tiles exit: no host synchronisation. Block y picks the output columns.
//
// MODE_GATEUP: A row r = h[sorted_pair[r] / topk] (gathered), W = w13[e] [2N, K] (rows 0..N-1 the
//   gate w1, N..2N-1 the up w3); each block computes matching gate and up columns and its
//   epilogue writes act[r, n] = silu(gate) * up (sorted order) — the [rows, 2N] product never
//   reaches memory.
// MODE_DOWN: A row r = act[r], W = w2[e] [N, K]; the epilogue scales row r by the routing weight
//   of pair p = sorted_pair[r] and writes ys[p, :] (per (token, slot) rows; add_norm sums the
//   k slots of a token in a fixed order: the combine is deterministic, with no atomics).
//
// bf16: tensor cores through WMMA 16x16x16 (fp32 accumulate), 128x128x32 block tiles, 8 warps,
// a 3-stage cp.async pipeline. fp32: a register-tiled SIMT kernel (64x64x16, 4x4 per thread).
// These are the large-batch variants "wmma128" and "simt64"; moe_stream.cu holds the mma.sync
// variants (tiles of 16..128 rows) that stream the expert weights at small batches.
#include "common.cuh"
#include "moe_rows.cuh"  // MODE_GATEUP, MODE_DOWN
#include <mma.h>
using namespace nvcuda;

// ================================ bf16, tensor cores ================================================
#define BM 128
#define BN 128
#define BK 32
#define STAGES 3
#define LDS (BK + 8)  // smem row pitch in elements: 80 B rows spread WMMA loads over the banks
#define STAGE_ELEMS ((BM + BN) * LDS)
#define BF16_SMEM_BYTES (STAGES * STAGE_ELEMS * 2)

template <int MODE>
__device__ void moe_gemm_bf16(const bf16* A, const bf16* W, bf16* out, const int* sorted_pair, const int* tiles,
                              const int* num_tiles, const float* pair_w, int N, int K, int topk)
{
    extern __shared__ __align__(128) unsigned char smem_raw[];
    bf16* smem = reinterpret_cast<bf16*>(smem_raw);
    if ((int)blockIdx.x >= *num_tiles) return;
    const int e = tiles[3 * blockIdx.x], row0 = tiles[3 * blockIdx.x + 1], row_end = tiles[3 * blockIdx.x + 2];
    // output columns of this block: GATEUP: act columns n0..n0+63 (gate and up, 128 GEMM columns);
    // DOWN: n0..n0+127.
    const int n0 = blockIdx.y * (MODE == MODE_GATEUP ? BN / 2 : BN);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const bf16* We = W + (size_t)e * (MODE == MODE_GATEUP ? 2 * N : N) * K;

    // Each thread copies 2 A chunks and 2 B chunks (16 B = 8 bf16) per stage: rows c>>2, k (c&3)*8.
    const bf16* a_src[2];
    const bf16* b_src[2];
    bool a_ok[2], b_ok[2];
    int ld_row[2], ld_k[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        int c = tid + i * 256;
        ld_row[i] = c >> 2;
        ld_k[i] = (c & 3) * 8;
        int r = row0 + ld_row[i];
        a_ok[i] = r < row_end;
        int rr = a_ok[i] ? r : row0;
        a_src[i] = MODE == MODE_GATEUP ? A + (size_t)(sorted_pair[rr] / topk) * K : A + (size_t)rr * K;
        int wr, col;
        if (MODE == MODE_GATEUP) {
            col = n0 + (ld_row[i] & 63);
            wr = (ld_row[i] < 64 ? 0 : N) + col;
        } else {
            col = n0 + ld_row[i];
            wr = col;
        }
        b_ok[i] = col < N;
        b_src[i] = We + (size_t)(b_ok[i] ? wr : 0) * K;
    }
    auto load_stage = [&](int stage, int kt) {
        bf16* As = smem + stage * STAGE_ELEMS;
        bf16* Bs = As + BM * LDS;
        int k = kt * BK;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            bool kok = k + ld_k[i] < K;
            cp_async16(As + ld_row[i] * LDS + ld_k[i], a_src[i] + (kok ? k + ld_k[i] : 0), a_ok[i] && kok);
            cp_async16(Bs + ld_row[i] * LDS + ld_k[i], b_src[i] + (kok ? k + ld_k[i] : 0), b_ok[i] && kok);
        }
    };

    // Warps 4 (rows) x 2 (columns): 32 rows x 4 column fragments each. GATEUP: fragments 0,1 are
    // gate columns and 2,3 the up columns of the same act columns (fragment element i of gate and
    // up then holds the same (row, column): WMMA maps elements identically for one fragment type).
    const int wm = warp >> 1, wn = warp & 1;
    int bcol[4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
        bcol[j] = MODE == MODE_GATEUP ? (j >> 1) * 64 + wn * 32 + (j & 1) * 16 : wn * 64 + j * 16;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) wmma::fill_fragment(acc[i][j], 0.f);

    const int ktiles = (K + BK - 1) / BK;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load_stage(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        int nk = kt + STAGES - 1;
        if (nk < ktiles) load_stage(nk % STAGES, nk);
        cp_async_commit();
        const bf16* As = smem + (kt % STAGES) * STAGE_ELEMS;
        const bf16* Bs = As + BM * LDS;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> af[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> bfr[4];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(af[i], As + (wm * 32 + i * 16) * LDS + kk, LDS);
#pragma unroll
            for (int j = 0; j < 4; ++j) wmma::load_matrix_sync(bfr[j], Bs + bcol[j] * LDS + kk, LDS);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) wmma::mma_sync(acc[i][j], af[i], bfr[j], acc[i][j]);
        }
    }
    cp_async_wait<0>();
    __syncthreads();

    // Epilogue: each warp stages one 16x16 fp32 fragment at a time in shared memory; a lane then
    // writes 8 consecutive outputs of one row.
    float* stage = reinterpret_cast<float*>(smem_raw) + warp * 256;
    const int r = lane >> 1, c8 = (lane & 1) * 8;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int pos = row0 + wm * 32 + i * 16 + r;  // sorted row
        const bool row_ok = pos < row_end;
#pragma unroll
        for (int j = 0; j < (MODE == MODE_GATEUP ? 2 : 4); ++j) {
            if (MODE == MODE_GATEUP) {
                wmma::fragment<wmma::accumulator, 16, 16, 16, float>& g = acc[i][j];
                const wmma::fragment<wmma::accumulator, 16, 16, 16, float>& u = acc[i][j + 2];
#pragma unroll
                for (int t = 0; t < g.num_elements; ++t)
                    g.x[t] = rnd<bf16>(rnd<bf16>(silu_f(rnd<bf16>(g.x[t]))) * rnd<bf16>(u.x[t]));
            }
            wmma::store_matrix_sync(stage, acc[i][j], 16, wmma::mem_row_major);
            __syncwarp();
            const int col = n0 + (MODE == MODE_GATEUP ? wn * 32 + j * 16 : wn * 64 + j * 16) + c8;
            if (row_ok) {
                size_t orow;
                float scale = 1.f;
                if (MODE == MODE_GATEUP) {
                    orow = pos;
                } else {
                    int p = sorted_pair[pos];
                    orow = p;
                    scale = pair_w[p];
                }
                bf16* dst = out + orow * N + col;
                if (col + 8 <= N) {
                    __align__(16) bf16 v[8];
#pragma unroll
                    for (int t = 0; t < 8; ++t) {
                        float val = stage[r * 16 + c8 + t];
                        v[t] = from_f<bf16>(MODE == MODE_DOWN ? rnd<bf16>(val) * rnd<bf16>(scale) : val);
                    }
                    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<uint4*>(v);
                } else {
                    for (int t = 0; t < 8 && col + t < N; ++t) {
                        float val = stage[r * 16 + c8 + t];
                        dst[t] = from_f<bf16>(MODE == MODE_DOWN ? rnd<bf16>(val) * rnd<bf16>(scale) : val);
                    }
                }
            }
            __syncwarp();
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) moe_gateup_bf16(
    const bf16* h, const bf16* w13, bf16* act, const int* sorted_pair, const int* tiles, const int* num_tiles,
    int N, int K, int topk)
{ moe_gemm_bf16<MODE_GATEUP>(h, w13, act, sorted_pair, tiles, num_tiles, nullptr, N, K, topk); }

extern "C" __global__ void __launch_bounds__(256) moe_down_bf16(
    const bf16* act, const bf16* w2, bf16* ys, const int* sorted_pair, const int* tiles, const int* num_tiles,
    const float* pair_w, int N, int K)
{ moe_gemm_bf16<MODE_DOWN>(act, w2, ys, sorted_pair, tiles, num_tiles, pair_w, N, K, 1); }

// ================================ fp32, SIMT ========================================================
// Block 64 rows x 64 GEMM columns, 16x16 threads, each 4 rows x 4 columns; K step 16; the next
// K slice is fetched into registers while the current one is multiplied from shared memory.
// GATEUP interleaves gate and up columns (GEMM column c -> act column c/2, gate when c is even),
// so a thread's 4 columns are (gate, up) of two act columns and the epilogue pairs them in place.
#define SBM 64
#define SBN 64
#define SBK 16

template <int MODE>
__device__ void moe_gemm_f32(const float* A, const float* W, float* out, const int* sorted_pair, const int* tiles,
                             const int* num_tiles, const float* pair_w, int N, int K, int topk)
{
    __shared__ __align__(16) float As[SBK][SBM + 4];
    __shared__ __align__(16) float Bs[SBK][SBN + 4];
    if ((int)blockIdx.x >= *num_tiles) return;
    const int e = tiles[3 * blockIdx.x], row0 = tiles[3 * blockIdx.x + 1], row_end = tiles[3 * blockIdx.x + 2];
    const int n0 = blockIdx.y * (MODE == MODE_GATEUP ? SBN / 2 : SBN);
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const float* We = W + (size_t)e * (MODE == MODE_GATEUP ? 2 * N : N) * K;

    // loader: one float4 of A and of B per thread per K slice: row tid>>2, k ((tid&3)*4)
    const int lr = tid >> 2, lk = (tid & 3) * 4;
    const int ar = row0 + lr;
    const bool a_ok = ar < row_end;
    const int arr = a_ok ? ar : row0;
    const float* a_src = MODE == MODE_GATEUP ? A + (size_t)(sorted_pair[arr] / topk) * K : A + (size_t)arr * K;
    int col, wr;
    if (MODE == MODE_GATEUP) { col = n0 + (lr >> 1); wr = (lr & 1 ? N : 0) + col; }
    else { col = n0 + lr; wr = col; }
    const bool b_ok = col < N;
    const float* b_src = We + (size_t)(b_ok ? wr : 0) * K;

    float acc[4][4] = {};
    float4 a_next = a_ok ? *reinterpret_cast<const float4*>(a_src + lk) : make_float4(0, 0, 0, 0);
    float4 b_next = b_ok ? *reinterpret_cast<const float4*>(b_src + lk) : make_float4(0, 0, 0, 0);
    for (int k = 0; k < K; k += SBK) {
        __syncthreads();
        As[lk][lr] = a_next.x; As[lk + 1][lr] = a_next.y; As[lk + 2][lr] = a_next.z; As[lk + 3][lr] = a_next.w;
        Bs[lk][lr] = b_next.x; Bs[lk + 1][lr] = b_next.y; Bs[lk + 2][lr] = b_next.z; Bs[lk + 3][lr] = b_next.w;
        __syncthreads();
        if (k + SBK < K) {
            a_next = a_ok ? *reinterpret_cast<const float4*>(a_src + k + SBK + lk) : make_float4(0, 0, 0, 0);
            b_next = b_ok ? *reinterpret_cast<const float4*>(b_src + k + SBK + lk) : make_float4(0, 0, 0, 0);
        }
#pragma unroll
        for (int kk = 0; kk < SBK; ++kk) {
            float4 a = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
            float4 b = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
            float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
        }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int pos = row0 + ty * 4 + i;
        if (pos >= row_end) continue;
        if (MODE == MODE_GATEUP) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                int c = n0 + tx * 2 + h;
                if (c < N) out[(size_t)pos * N + c] = silu_f(acc[i][2 * h]) * acc[i][2 * h + 1];
            }
        } else {
            const int p = sorted_pair[pos];
            const float w = pair_w[p];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                int c = n0 + tx * 4 + j;
                if (c < N) out[(size_t)p * N + c] = acc[i][j] * w;
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) moe_gateup_f32(
    const float* h, const float* w13, float* act, const int* sorted_pair, const int* tiles, const int* num_tiles,
    int N, int K, int topk)
{ moe_gemm_f32<MODE_GATEUP>(h, w13, act, sorted_pair, tiles, num_tiles, nullptr, N, K, topk); }

extern "C" __global__ void __launch_bounds__(256) moe_down_f32(
    const float* act, const float* w2, float* ys, const int* sorted_pair, const int* tiles, const int* num_tiles,
    const float* pair_w, int N, int K)
{ moe_gemm_f32<MODE_DOWN>(act, w2, ys, sorted_pair, tiles, num_tiles, pair_w, N, K, 1); }
