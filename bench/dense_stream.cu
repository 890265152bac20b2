// bench/dense.py's version 2 (a workshop kernel: it lost to cuBLAS, see bench/README.md):
// dense GEMM for a few rows, y [M, N] = x [M, K] @ w [N, K]^T, bf16 in, fp32 accumulation, y in
// bf16 or fp32 (the LM head's logits), for 1 <= M <= 64.
//
// The idea: at these rows a projection is a weight stream, and a 2,048-column matrix in 64- or
// 128-column slabs leaves 16-32 blocks per K pass, too few reads in flight for the GPU. So:
// - a block owns BN = 128 weight rows (output columns) and ALL the rows of x (MT m16 tiles, read
//   once per block: x is re-read N / BN times from L2, M / BN of the weights' bytes), and one of
//   `gridDim.y` slices of K (split-K), so that the grid has enough blocks and each of them a
//   STAGES-deep cp.async pipeline of 32 KB weight stages in flight;
// - the 4 warps each own 32 columns and every m16 tile: mma.sync m16n8k16 on ldmatrix fragments,
//   moe_stream.cu's layout (BKB = 256 bytes of K per stage, rows padded by 16 bytes);
// - under PDL the weights' first stages are in flight before pdl_wait: they never depend on the
//   kernel before, so their latency hides behind its tail;
// - split-K through a thread-block cluster: the SPLITS blocks of one column slab are one cluster
//   (grid (N / BN, SPLITS), cluster (1, SPLITS, 1)); each leaves its fp32 partial tile in its own
//   shared memory, and block j of the cluster adds rows j, j + SPLITS, ... of all SPLITS tiles, read
//   through distributed shared memory in rank order (the same bits on every run), and writes y.
//   With one split the block writes y itself.
// extern "C" names: dense_stream_m<MT>_s<SPLITS>_<out> for MT 1-4 (M <= 16 MT), SPLITS 1, 2, 4, 8
// and out bf16 | f32.
#include <cooperative_groups.h>

#include "../optimized/common.cuh"

namespace cg = cooperative_groups;

#define DS_BN 128
#define DS_BKB 256
#define DS_THREADS 128

// Shared memory per block: STAGES x (BN weight rows + 16 MT x rows) x (BKB + 16) bytes (bench/dense.py mirrors it).
#define DS_STAGES(MT) ((MT) <= 2 ? 4 : 3)

template <typename TO, int MT, int SPLITS>
__device__ void dense_stream(const bf16* x, int ldx, const bf16* w, TO* y, int M, int N, int K, int kt_per_split)
{
    constexpr int STAGES = DS_STAGES(MT);
    constexpr int BM = 16 * MT, BN = DS_BN, BKB = DS_BKB, LDB = BKB + 16;
    constexpr int CPR = BKB / 16;               // 16-byte chunks of one row per stage
    constexpr int RPP = DS_THREADS / CPR;       // rows one pass of the block covers
    constexpr int WCH = BN / RPP, ACH = BM / RPP;  // chunks per thread per stage: weights, x
    constexpr int STAGE_BYTES = (BN + BM) * LDB;
    constexpr int NC = BN / (16 * 4);           // B ldmatrix calls per warp and K step (two n8 tiles each)
    static_assert(BM % RPP == 0 && BN % RPP == 0, "bad dense_stream tile");

    extern __shared__ __align__(128) unsigned char smem[];
    require_dynamic_smem(STAGES * STAGE_BYTES);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int n0 = blockIdx.x * BN;
    const size_t kbytes = (size_t)K * sizeof(bf16);
    const int kt0 = blockIdx.y * kt_per_split;
    const int nkt = min(kt_per_split, (int)((kbytes + BKB - 1) / BKB) - kt0);  // <= 0: a slice past K, all zeros
    const int kc = (tid % CPR) * 16, lrow = tid / CPR;  // this thread's chunk: byte kc of rows lrow + i * RPP

    // ---- weights first, before the wait: they do not depend on the kernel before
    const char* w_src[WCH];
    bool w_ok[WCH];
#pragma unroll
    for (int i = 0; i < WCH; ++i) {
        const int col = n0 + lrow + i * RPP;
        w_ok[i] = col < N;
        w_src[i] = reinterpret_cast<const char*>(w) + (size_t)(w_ok[i] ? col : 0) * kbytes + kc;
    }
    auto load_w = [&](int stage, int kt) {
        unsigned char* s = smem + stage * STAGE_BYTES + lrow * LDB + kc;
        const size_t kb = (size_t)(kt0 + kt) * BKB;
        const bool kok = kb + kc < kbytes;
#pragma unroll
        for (int i = 0; i < WCH; ++i) cp_async16(s + i * RPP * LDB, w_src[i] + (kok ? kb : 0), w_ok[i] && kok);
    };
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s)
        if (s < nkt) load_w(s, s);
    pdl_wait();
    pdl_trigger();

    // ---- x rows (rows past M zero-fill)
    const char* a_src[ACH];
    bool a_ok[ACH];
#pragma unroll
    for (int i = 0; i < ACH; ++i) {
        const int r = lrow + i * RPP;
        a_ok[i] = r < M;
        a_src[i] = reinterpret_cast<const char*>(x + (size_t)(a_ok[i] ? r : 0) * ldx) + kc;
    }
    auto load_a = [&](int stage, int kt) {
        unsigned char* s = smem + stage * STAGE_BYTES + (BN + lrow) * LDB + kc;
        const size_t kb = (size_t)(kt0 + kt) * BKB;
        const bool kok = kb + kc < kbytes;
#pragma unroll
        for (int i = 0; i < ACH; ++i) cp_async16(s + i * RPP * LDB, a_src[i] + (kok ? kb : 0), a_ok[i] && kok);
    };
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s)
        if (s < nkt) load_a(s, s);
    // the prologue is one commit group; STAGES - 2 empty ones keep the loop's wait count right
    cp_async_commit();
#pragma unroll
    for (int s = 0; s < STAGES - 2; ++s) cp_async_commit();

    // ---- fragments: B call c covers the warp's columns wb + 16 c .. + 15 (lanes 0-15 the first n8 tile)
    const int wb = warp * 16 * NC;
    const unsigned b_off = (wb + (lane >> 4) * 8 + (lane & 7)) * LDB + ((lane >> 3) & 1) * 16;
    const unsigned a_off = (BN + (lane & 7) + ((lane >> 3) & 1) * 8) * LDB + (lane >> 4) * 16;
    const unsigned sbase = smem_addr(smem);
    float acc[MT][NC][2][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int c = 0; c < NC; ++c)
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[m][c][i >> 2][i & 3] = 0.f;

    for (int kt = 0; kt < nkt; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // stage kt is visible to all; everyone is done with the stage refilled next
        const int nk = kt + STAGES - 1;
        if (nk < nkt) {
            load_w(nk % STAGES, nk);
            load_a(nk % STAGES, nk);
        }
        cp_async_commit();
        const unsigned st = sbase + (kt % STAGES) * STAGE_BYTES;
#pragma unroll
        for (int ks = 0; ks < BKB; ks += 32) {
            unsigned b[NC][4];
#pragma unroll
            for (int c = 0; c < NC; ++c) ldsm_x4(st + b_off + c * 16 * LDB + ks, b[c]);
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                if (m * 16 < M) {  // uniform: m16 tiles past M are all padding
                    unsigned a[4];
                    ldsm_x4(st + a_off + m * 16 * LDB + ks, a);
#pragma unroll
                    for (int c = 0; c < NC; ++c) {
                        mma_bf16(acc[m][c][0], a, b[c][0], b[c][1]);
                        mma_bf16(acc[m][c][1], a, b[c][2], b[c][3]);
                    }
                }
            }
        }
    }
    cp_async_wait<0>();

    // ---- accumulator element i of an n8 tile: row g + 8 (i >> 1), column 2 t + (i & 1)
    const int g = lane >> 2, t2 = (lane & 3) * 2;
    if constexpr (SPLITS == 1) {
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                const int r = m * 16 + g + hr * 8;
                if (r >= M) continue;
#pragma unroll
                for (int c = 0; c < NC; ++c)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        store_pair<TO>(y + (size_t)r * N, n0 + wb + c * 16 + h * 8 + t2, N, acc[m][c][h][2 * hr],
                                       acc[m][c][h][2 * hr + 1]);
            }
    } else {
        // the partial tile [BM][PP] in this block's shared memory (the pipeline's stages are free now)
        constexpr int PP = BN + 4;  // row pitch in floats: 16-byte rows, float2 stores off a bank stride
        static_assert(BM * PP * 4 <= STAGES * STAGE_BYTES, "partial tile larger than the stages");
        float* part = reinterpret_cast<float*>(smem);
        __syncthreads();  // every warp has read its last stage
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                const int r = m * 16 + g + hr * 8;
#pragma unroll
                for (int c = 0; c < NC; ++c)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        *reinterpret_cast<float2*>(part + r * PP + wb + c * 16 + h * 8 + t2) =
                            make_float2(acc[m][c][h][2 * hr], acc[m][c][h][2 * hr + 1]);
            }
        cg::cluster_group cluster = cg::this_cluster();
        cluster.sync();  // every block's partial is written and visible to the cluster
        const int rank = (int)cluster.block_rank();
        const float* src[SPLITS];
#pragma unroll
        for (int j = 0; j < SPLITS; ++j) src[j] = cluster.map_shared_rank(part, j);
        constexpr int Q = BN / 4;  // float4 columns of the slab
        const int my_rows = (M - rank + SPLITS - 1) / SPLITS;  // rows rank, rank + SPLITS, ... below M
        for (int q = tid; q < my_rows * Q; q += DS_THREADS) {
            const int r = rank + (q / Q) * SPLITS, c4 = (q % Q) * 4;
            if (n0 + c4 >= N) continue;  // N % 4 == 0 (the host's check): a float4 is all in or all out
            float4 v[SPLITS];
#pragma unroll
            for (int j = 0; j < SPLITS; ++j) v[j] = *reinterpret_cast<const float4*>(src[j] + r * PP + c4);
            float4 s = v[0];
#pragma unroll
            for (int j = 1; j < SPLITS; ++j) {  // in rank order: the same sum on every run
                s.x += v[j].x;
                s.y += v[j].y;
                s.z += v[j].z;
                s.w += v[j].w;
            }
            TO* dst = y + (size_t)r * N + n0 + c4;
            store2<TO>(dst, s.x, s.y);
            store2<TO>(dst + 2, s.z, s.w);
        }
        cluster.sync();  // no block leaves while another still reads its shared memory
    }
}

#define DS_ARGS(TO) const bf16 *x, int ldx, const bf16 *w, TO *y, int M, int N, int K, int kt_per_split
#define DENSE_STREAM_1(MT, TO, OUT)                                                                               \
    extern "C" __global__ void __launch_bounds__(DS_THREADS) dense_stream_m##MT##_s1_##OUT(DS_ARGS(TO))              \
    {                                                                                                             \
        dense_stream<TO, MT, 1>(x, ldx, w, y, M, N, K, kt_per_split);                                             \
    }
#define DENSE_STREAM_S(MT, S, TO, OUT)                                                                            \
    extern "C" __global__ void __cluster_dims__(1, S, 1) __launch_bounds__(DS_THREADS)                           \
        dense_stream_m##MT##_s##S##_##OUT(DS_ARGS(TO))                                                                \
    {                                                                                                             \
        dense_stream<TO, MT, S>(x, ldx, w, y, M, N, K, kt_per_split);                                             \
    }
#define DENSE_STREAM(MT, TO, OUT)                                                                                 \
    DENSE_STREAM_1(MT, TO, OUT)                                                                                   \
    DENSE_STREAM_S(MT, 2, TO, OUT)                                                                                \
    DENSE_STREAM_S(MT, 4, TO, OUT)                                                                                \
    DENSE_STREAM_S(MT, 8, TO, OUT)

DENSE_STREAM(1, bf16, bf16)
DENSE_STREAM(2, bf16, bf16)
DENSE_STREAM(3, bf16, bf16)
DENSE_STREAM(4, bf16, bf16)
DENSE_STREAM(1, float, f32)
DENSE_STREAM(2, float, f32)
DENSE_STREAM(3, float, f32)
DENSE_STREAM(4, float, f32)
