// Grouped MoE GEMMs for large batches on Hopper's warpgroup tensor cores (wgmma, sm_90a only).
//
// Same contract as moe_stream.cu (the tile table of moe_sort_pairs with 128-row tiles, MODE_GATEUP
// with SiLU*up in the epilogue, MODE_DOWN writing ys[pair] scaled by the routing weight), for the
// batches where the MoE is compute-bound (thousands of tokens: hundreds of rows per expert).
// moe_stream.cu's mma.sync kernels top out near 250-300 TFLOP/s there on an H100; mma.sync issues
// one m16n8k16 per warp instruction and feeds it from registers loaded by ldmatrix, while wgmma
// lets a warpgroup (4 warps) multiply a 64 x N tile straight out of shared memory, asynchronously.
//
// A block = 2 warpgroups (256 threads) on BM = 128 rows of one expert x BN GEMM columns (GATEUP:
// BN / 2 gate rows of w13 and the matching BN / 2 up rows; DOWN: BN output columns). Each
// warpgroup owns 64 rows and issues m64nBNk16 wgmmas, accumulating in fp32 registers.
// - K goes in steps of BK = 64 bf16 = 128 bytes, one row of the 128-byte swizzle: each stage holds
//   the tile's 128 rows and the slab's BN weight rows as 128-byte rows whose 16-byte chunks are
//   stored at chunk ^ (row & 7) (the layout wgmma's SW128 descriptors describe; no bank conflicts
//   on either side). All 256 threads fill the stages with 16-byte cp.async copies (the gate/up rows
//   are gathered token rows of h, which a TMA box cannot express).
// - Pipeline: STAGES stages, loads run STAGES - 2 k-steps ahead; each warpgroup keeps one k-step of
//   wgmmas in flight (wait_group 1), so the stage refilled at step kt (read at kt - 2) is free once
//   every thread has passed the barrier at the top of step kt.
// - Both warpgroups multiply even when a tile's rows end in the first 64: a branch around wgmma makes
//   ptxas serialize every wgmma of the kernel (its warning C7518), which costs far more.
// - Epilogue through shared memory: the fragments go to a [128][columns] bf16 tile in the freed stages,
//   then whole rows leave with 16-byte copies (act rows in place; DOWN: ys rows of the pairs, scaled while
//   staged, with each row's pair and weight read at the start).
// - Grid: x = column slab, y = row tile (kernels.py's _moe_grid), so the slabs of one tile run side by
//   side and read its rows from L2 once.
// - Launched with PDL (kernels.py): the down GEMM's blocks start their first weight stages during the
//   gate/up's last wave (H100, bit-equal logits: 64x16 10.126 -> 10.108 ms of GPU per forward, 8x512
//   26.95 -> 26.82).
// Compiled for sm_90a (kernels.py asks for it); for any other target the kernels are a trap, so
// that the project's sm_90 compile check still builds this file.
// H100, 4096 tokens, real shape, 12.5 % of the rows padding: wg256 gate/up ~450 us + down ~250 us
// (~540 / 480 TFLOP/s useful). The same loop with no loads, no
// barrier and no epilogue runs at ~790 TFLOP/s (cuBLAS's 8192^3: 788), so what is left is around the
// wgmmas: the epilogue (not overlapped: one block per SM; gate/up's staging ~60 us) and the loads of
// the down GEMM. Tried and lost: 3 stages (-20 %), the 64-byte swizzle with 32-byte k-steps and 6 or 8
// stages (-10 %), 128 x 128 tiles with 6 stages (-15 %), no proxy fence (no faster), a persistent grid
// whose next item loads during the epilogue (a tie).
// Variants (extern "C" names moe_{gateup,down}_<variant>_bf16; kernels.py mirrors the table):
//   variant  BM  BN STAGES  dynamic smem = STAGES * (BM + BN) * 128 + 1024 (alignment)  blocks/SM
//   wg128   128 128   3     99,328                                                        2
//   wg256   128 256   4     197,632                                                       1
#include <cstdint>
#include "common.cuh"
#include "moe_rows.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WG_ARCH_OK 1
#else
#define WG_ARCH_OK 0
#endif

// The wgmma descriptor of a K-major operand in the 128-byte swizzle: rows of 128 bytes, 8-row
// groups 1024 bytes apart (the stride byte offset); the leading byte offset is unused for swizzled
// K-major layouts. Bits: start address >> 4 [0,14), LBO >> 4 [16,30), SBO >> 4 [32,46), layout
// [62,64) = 1 (128B swizzle). The atom must be 1024-byte aligned; the k16 steps inside the 128-byte
// row advance the start address by 32 bytes (the hardware applies the XOR to the final address).
__device__ __forceinline__ uint64_t sw128_desc(unsigned saddr)
{
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait()
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// cp.async writes through the generic proxy; wgmma reads shared memory through the async proxy.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

__device__ __forceinline__ float tanh_approx(float x)
{
    float y;
    asm("tanh.approx.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Keeps the compiler from moving accumulator reads or writes across an in-flight wgmma.
template <int R> __device__ __forceinline__ void fence_regs(float (&d)[R])
{
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// One m64nNk16 wgmma: d (64 x N, fp32, the warpgroup's accumulator fragment) += A (64 x 16, from
// desc_a) * B^T (B: N x 16, from desc_b), both K-major bf16 in shared memory; scale_d = 0 starts
// from zero. The operand lists are spelled out: inline asm has no loops.
#define WG_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
                 "+f"(d[i + 6]), "+f"(d[i + 7])

__device__ __forceinline__ void wgmma_n128(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
                 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : WG_D8(0), WG_D8(8), WG_D8(16), WG_D8(24),
                   WG_D8(32), WG_D8(40), WG_D8(48), WG_D8(56)
                 : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

__device__ __forceinline__ void wgmma_n256(float (&d)[128], uint64_t desc_a, uint64_t desc_b, int scale_d)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
                 "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
                 "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
                 "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
                 "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
                 "}, %128, %129, p, 1, 1, 0, 0;\n}\n"
                 : WG_D8(0), WG_D8(8), WG_D8(16), WG_D8(24),
                   WG_D8(32), WG_D8(40), WG_D8(48), WG_D8(56),
                   WG_D8(64), WG_D8(72), WG_D8(80), WG_D8(88),
                   WG_D8(96), WG_D8(104), WG_D8(112), WG_D8(120)
                 : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

template <int BN> __device__ __forceinline__ void wgmma_bn(float (&d)[BN / 2], uint64_t desc_a, uint64_t desc_b, int scale_d)
{
    if constexpr (BN == 128)
        wgmma_n128(d, desc_a, desc_b, scale_d);
    else
        wgmma_n256(d, desc_a, desc_b, scale_d);
}

template <int MODE, int BN, int STAGES>
__device__ void moe_wgmma(const bf16* A, const bf16* W, bf16* out, const int* sorted_pair, const int* tiles,
                          const int* num_tiles, const float* pair_w, int N, int K, int topk)
{
#if WG_ARCH_OK
    constexpr int BM = 128, THREADS = 256, ROW_BYTES = 128;  // bytes of K per row and stage: 64 bf16
    constexpr int A_BYTES = BM * ROW_BYTES, STAGE_BYTES = (BM + BN) * ROW_BYTES;
    constexpr int CPR = ROW_BYTES / 16;                       // 16-byte chunks per row
    constexpr int RPP = THREADS / CPR;                        // rows per pass
    constexpr int ACH = BM / RPP, WCH = BN / RPP;              // copies per thread and stage
    constexpr int NACC = BN / 2;                               // accumulator registers per thread
    static_assert(BN == 128 || BN == 256, "wgmma variants have 128 or 256 columns");
    static_assert(STAGES >= 3, "loads run STAGES - 2 steps ahead");

    extern __shared__ __align__(1024) unsigned char smem_raw[];
    // Under PDL (common.cuh's rule): the gate/up's tile table is the kernel right before's output (moe_sort),
    // so it waits first; the down GEMM's is two kernels back, finished once the gate/up has triggered, so
    // the down reads it and puts its first stages of weights in flight before it waits, during the
    // gate/up's last wave.
    if constexpr (MODE == MODE_GATEUP) pdl_wait();
    if ((int)blockIdx.y >= *num_tiles) return;
    const unsigned raw_base = smem_addr(smem_raw);
    const unsigned sbase = (raw_base + 1023u) & ~1023u;  // swizzle atoms need 1024-byte alignment
    unsigned char* smem = smem_raw + (sbase - raw_base);
    require_dynamic_smem(STAGES * STAGE_BYTES + 1024);  // + the alignment slack
    const int e = tiles[3 * blockIdx.y], row0 = tiles[3 * blockIdx.y + 1];
    const int rows = min(tiles[3 * blockIdx.y + 2] - row0, BM);
    const int n0 = blockIdx.x * (MODE == MODE_GATEUP ? BN / 2 : BN);
    const int tid = threadIdx.x;
    const size_t kbytes = (size_t)K * sizeof(bf16);
    const int ktiles = (int)((kbytes + ROW_BYTES - 1) / ROW_BYTES);
    // this thread's copies: chunk kc of rows lrow + i * RPP, stored at the swizzled chunk ^ (row & 7)
    // (the same for all of them, RPP being a multiple of 8)
    const int chunk = tid % CPR, kc = chunk * 16, lrow = tid / CPR;
    const int dst_off = lrow * ROW_BYTES + ((chunk ^ (lrow & 7)) * 16);

    const char* w_src[WCH];
    bool w_ok[WCH];
    weight_row_sources<bf16, MODE, BN, WCH, RPP>(W, e, n0, N, K, lrow, kc, w_src, w_ok);
    const char* a_src[ACH];
    bool a_ok[ACH];
    tile_row_sources<bf16, MODE, ACH, RPP>(A, sorted_pair, row0, rows, K, topk, lrow, kc, a_src, a_ok);
    // k-step kt's copies of the rows in src into the stage from byte `at` on (past K, or past the rows /
    // columns, they zero-fill): the tile rows (a_src, at the stage's start) or the weight rows (w_src)
    auto copy_rows = [&](unsigned at, const auto& src, const auto& ok, int kt) {
        unsigned char* s = smem + at + dst_off;
        const size_t kb = (size_t)kt * ROW_BYTES;
        const bool kok = kb + kc < kbytes;
#pragma unroll
        for (int i = 0; i < (int)(sizeof(ok) / sizeof(ok[0])); ++i)
            cp_async16(s + i * RPP * ROW_BYTES, src[i] + (kok ? kb : 0), ok[i] && kok);
    };
    auto load_rows = [&](int stage, int kt) { copy_rows(stage * STAGE_BYTES, a_src, a_ok, kt); };
    auto load_weights = [&](int stage, int kt) { copy_rows(stage * STAGE_BYTES + A_BYTES, w_src, w_ok, kt); };
    auto load_stage = [&](int stage, int kt) {
        load_rows(stage, kt);
        load_weights(stage, kt);
        cp_async_commit();
    };
    if constexpr (MODE == MODE_DOWN) {  // the first stages' weights join the first commit group
#pragma unroll
        for (int s = 0; s < STAGES - 2; ++s) load_weights(s, s);
        pdl_wait();
    }
    pdl_trigger();
#pragma unroll
    for (int s = 0; s < STAGES - 2; ++s) {  // one commit group per stage, empty ones past K
        load_rows(s, s);
        if constexpr (MODE == MODE_GATEUP) load_weights(s, s);  // the down's went ahead of the wait
        cp_async_commit();
    }

    // DOWN: each row's pair and bf16-rounded routing weight, read now so that their latency hides behind
    // the main loop (the epilogue used to fetch both for every 16-byte chunk it stored)
    __shared__ int s_pair[BM];
    __shared__ float s_scale[BM];
    if constexpr (MODE == MODE_DOWN) {
        if (tid < BM) {
            const int p = tid < rows ? sorted_pair[row0 + tid] : 0;
            s_pair[tid] = p;
            s_scale[tid] = tid < rows ? rnd<bf16>(pair_w[p]) : 0.f;
        }
    }

    const int wg = tid >> 7;
    float acc[NACC];
#pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] = 0.f;

    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<STAGES - 3>();  // this thread's copies of step kt have landed
        fence_proxy_async();          // ... and are visible to wgmma
        __syncthreads();              // everyone's copies of step kt; wgmmas of step kt - 2 done everywhere
        load_stage((kt + STAGES - 2) % STAGES, kt + STAGES - 2);
        const unsigned st = sbase + (kt % STAGES) * STAGE_BYTES;
        const uint64_t da = sw128_desc(st + wg * 64 * ROW_BYTES), db = sw128_desc(st + A_BYTES);
        fence_regs(acc);
        wgmma_fence();
#pragma unroll
        for (int k16 = 0; k16 < ROW_BYTES / 32; ++k16)  // 32 bytes of K each: +2 in the descriptor's address
            wgmma_bn<BN>(acc, da + 2 * k16, db + 2 * k16, 1);
        wgmma_commit();
        wgmma_wait<1>();
        fence_regs(acc);
    }
    wgmma_wait<0>();
    fence_regs(acc);
    cp_async_wait<0>();

    // ---- epilogue, through shared memory (the stages are free now): each thread writes its values
    // as bf16 pairs into a [BM][OUTC] tile, then the block stores whole rows with 16-byte copies
    // (the fragment's own layout would store 4-byte pairs, 8 rows per warp instruction). Register
    // 4j + i of the m64nBN fragment is (row 16 warp + lane / 4 + 8 (i >> 1), column 8 j + 2 (lane % 4)
    // + (i & 1)) of the warpgroup's 64 rows.
    constexpr int OUTC = MODE == MODE_GATEUP ? BN / 2 : BN;  // output columns of the block
    constexpr int OPITCH = OUTC * 2 + 16;                     // bytes; rows 4 banks apart: no conflicts
    static_assert(BM * OPITCH <= STAGES * STAGE_BYTES, "the output tile must fit in the stages");
    __syncthreads();  // every warpgroup is done reading the stages
    {
        const int warp = (tid & 127) >> 5, lane = tid & 31;
        const int t2 = (lane & 3) * 2;
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const int r = wg * 64 + warp * 16 + (lane >> 2) + hr * 8;
            unsigned char* srow = smem + r * OPITCH;
            if constexpr (MODE == MODE_GATEUP) {
#pragma unroll
                for (int j = 0; j < BN / 16; ++j) {  // gate columns; the up column is BN / 2 further: j + BN / 16
                    float v[2];
#pragma unroll
                    for (int q = 0; q < 2; ++q) {
                        const float gt = acc[4 * j + 2 * hr + q], up = acc[4 * (j + BN / 16) + 2 * hr + q];
                        const float h = 0.5f * rnd<bf16>(gt);  // SiLU(g) = h + h tanh(h), h = g / 2: one MUFU op
                        v[q] = rnd<bf16>(fmaf(h, tanh_approx(h), h)) * rnd<bf16>(up);
                    }
                    store2<bf16>(reinterpret_cast<bf16*>(srow) + 8 * j + t2, v[0], v[1]);
                }
            } else {
                const float scale = s_scale[r];  // (made visible by the main loop's barriers)
#pragma unroll
                for (int j = 0; j < BN / 8; ++j)
                    store2<bf16>(reinterpret_cast<bf16*>(srow) + 8 * j + t2, rnd<bf16>(acc[4 * j + 2 * hr]) * scale,
                                 rnd<bf16>(acc[4 * j + 2 * hr + 1]) * scale);
            }
        }
    }
    __syncthreads();
    constexpr int OCH = OUTC / 8;  // 16-byte chunks per output row
    const bool full_chunks = (N & 7) == 0;
    for (int i = tid; i < rows * OCH; i += THREADS) {  // the staged values are final: a plain copy
        const int r = i / OCH, c = (i % OCH) * 8, col = n0 + c;
        if (col >= N) continue;
        const bf16* src = reinterpret_cast<const bf16*>(smem + r * OPITCH) + c;
        bf16* dst = out + (size_t)(MODE == MODE_GATEUP ? row0 + r : s_pair[r]) * N + col;
        if (full_chunks && col + 8 <= N) {
            *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
        } else {
            for (int q = 0; q < 8 && col + q < N; ++q) dst[q] = src[q];
        }
    }
#else
    __trap();  // built for a target without wgmma: kernels.py compiles this file for sm_90a
#endif
}

// NAME, BN, STAGES, blocks per SM (__launch_bounds__)
#define WGMMA_VARIANT(NAME, BN, STAGES, BLOCKS)                                                                   \
    extern "C" __global__ void __launch_bounds__(256, BLOCKS) moe_gateup_##NAME(                                 \
        const bf16* h, const bf16* w13, bf16* act, const int* sorted_pair, const int* tiles, const int* num_tiles, \
        int N, int K, int topk)                                                                                  \
    {                                                                                                            \
        moe_wgmma<MODE_GATEUP, BN, STAGES>(h, w13, act, sorted_pair, tiles, num_tiles, nullptr, N, K, topk);     \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(256, BLOCKS) moe_down_##NAME(                                   \
        const bf16* act, const bf16* w2, bf16* ys, const int* sorted_pair, const int* tiles, const int* num_tiles, \
        const float* pair_w, int N, int K)                                                                       \
    {                                                                                                            \
        moe_wgmma<MODE_DOWN, BN, STAGES>(act, w2, ys, sorted_pair, tiles, num_tiles, pair_w, N, K, 1);           \
    }

WGMMA_VARIANT(wg128_bf16, 128, 3, 2)
WGMMA_VARIANT(wg256_bf16, 256, 4, 1)
