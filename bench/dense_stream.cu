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
// - split-K: each block leaves its fp32 partial in `ws` [splits][M][N]; the last block of a column
//   slab to arrive (arrived_last, `counts` one per slab) adds them in split order (so the sum is the
//   same on every run) and writes y. With one split the block writes y itself.
// extern "C" names: dense_stream_m<MT>_<out> for MT 1-4 (M <= 16 MT) and out bf16 | f32.
#include "../optimized/common.cuh"

#define DS_BN 128
#define DS_BKB 256
#define DS_THREADS 128

// Shared memory per block: STAGES x (BN weight rows + 16 MT x rows) x (BKB + 16) bytes (bench/dense.py mirrors it).
#define DS_STAGES(MT) ((MT) <= 2 ? 4 : 3)

template <typename TO, int MT>
__device__ void dense_stream(const bf16* x, int ldx, const bf16* w, TO* y, float* ws, unsigned* counts, int M, int N,
                             int K, int kt_per_split)
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
    const int nkt = min(kt_per_split, (int)((kbytes + BKB - 1) / BKB) - kt0);  // >= 1: the host's split
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
    const int splits = gridDim.y;
    const int g = lane >> 2, t2 = (lane & 3) * 2;
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const int r = m * 16 + g + hr * 8;
            if (r >= M) continue;
#pragma unroll
            for (int c = 0; c < NC; ++c)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int col = n0 + wb + c * 16 + h * 8 + t2;
                    const float v0 = acc[m][c][h][2 * hr], v1 = acc[m][c][h][2 * hr + 1];
                    if (splits == 1)
                        store_pair<TO>(y + (size_t)r * N, col, N, v0, v1);
                    else
                        store_pair<float>(ws + ((size_t)blockIdx.y * M + r) * N, col, N, v0, v1);
                }
        }
    if (splits == 1 || !arrived_last(counts + blockIdx.x, splits)) return;

    // ---- the slab's last block: y = the partials summed in split order (N % 4 == 0: the host's check)
    constexpr int Q = BN / 4;  // float4 columns of the slab
    for (int q = tid; q < M * Q; q += DS_THREADS) {
        const int r = q / Q, col = n0 + (q % Q) * 4;
        if (col >= N) continue;
        const float* p = ws + (size_t)r * N + col;
        float4 s = __ldcg(reinterpret_cast<const float4*>(p));
#pragma unroll 4
        for (int j = 1; j < splits; ++j) {
            const float4 v = __ldcg(reinterpret_cast<const float4*>(p + (size_t)j * M * N));
            s.x += v.x;
            s.y += v.y;
            s.z += v.z;
            s.w += v.w;
        }
        TO* dst = y + (size_t)r * N + col;
        store2<TO>(dst, s.x, s.y);
        store2<TO>(dst + 2, s.z, s.w);
    }
}

#define DENSE_STREAM(MT, TO, OUT)                                                                                 \
    extern "C" __global__ void __launch_bounds__(DS_THREADS) dense_stream_m##MT##_##OUT(                          \
        const bf16* x, int ldx, const bf16* w, TO* y, float* ws, unsigned* counts, int M, int N, int K,          \
        int kt_per_split)                                                                                         \
    {                                                                                                             \
        dense_stream<TO, MT>(x, ldx, w, y, ws, counts, M, N, K, kt_per_split);                                    \
    }

DENSE_STREAM(1, bf16, bf16)
DENSE_STREAM(2, bf16, bf16)
DENSE_STREAM(3, bf16, bf16)
DENSE_STREAM(4, bf16, bf16)
DENSE_STREAM(1, float, f32)
DENSE_STREAM(2, float, f32)
DENSE_STREAM(3, float, f32)
DENSE_STREAM(4, float, f32)
