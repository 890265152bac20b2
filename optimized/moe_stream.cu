// Grouped MoE GEMMs for small batches: weight streaming with mma.sync tensor cores.
//
// Same contract as moe_gemm.cu (the tile table of moe_sort_pairs, MODE_GATEUP with SiLU*up in the
// epilogue, MODE_DOWN writing ys[pair] scaled by the routing weight), but built for experts with
// few rows, where the cost is reading the expert weights once:
// - a block owns one row tile (16 * MT rows of one expert) and a slab of BN = 64 GEMM columns
//   (GATEUP: 32 gate + the matching 32 up rows of w13, i.e. 32 act columns; DOWN: 64 output
//   columns; mma128f: BN = 128); with few rows per expert the grid is (touched experts) x (N / 64
//   slabs), over a thousand blocks, two per SM, each streaming its slab once;
// - the slab and the tile's rows go through shared memory in a STAGES-deep cp.async pipeline of
//   16-byte coalesced copies (BKB bytes of K per stage: a 256 B run of each weight row);
// - the warps read fragments with ldmatrix and multiply with mma.sync m16n8k16 (bf16) or, for fp32
//   weights, m16n8k8 TF32 three times (3xTF32: a = hi + lo, a*b ~ hi*hi + hi*lo + lo*hi, close to
//   fp32 accuracy). Row tiles of a 16-row group that holds no rows skip their MMAs (the tile's
//   row count is read on the device), so a tile that is mostly padding costs little.
// Both element types share the code because the fragments have the same byte geometry: an MMA
// step covers 32 bytes of K (16 bf16 or 8 fp32) and ldmatrix moves 8 rows x 16 bytes.
// Variants (extern "C" names moe_{gateup,down}_<variant>_{bf16,f32}; kernels.py mirrors the table):
//   variant  BM  MT WM WN  BN BKB STAGES FAST  dynamic smem = STAGES * (BN + BM) * (BKB + 16)  blocks/SM
//   mma16    16   1  1  4  64 256   4     -    87,040                                           2
//   mma16b   16   1  1  4  64 256   3     -    65,280                                           3
//   mma16c   16   1  1  4  64 128   6     -    69,120                                           3
//   mma32    32   2  1  4  64 256   4     -    104,448                                          2
//   mma64    64   4  1  4  64 256   3     -    104,448                                          2
//   mma128  128   8  2  2  64 128   4     -    110,592                                          2
//   mma16f   16   1  1  4  64 256   4   fp32   87,040                                           2
//   mma64f   64   4  1  4  64 256   3   fp32   104,448                                          2
//   mma128f 128   8  2  4 128 256   3   fp32   208,896                                          1
//   mma64fl  as mma64f, FLAGS LATE_REFILL                                                        2
//   mma128tl as mma128f, FLAGS SPLIT_TRUNC | LATE_REFILL                                         1
//   mma128r 128   8  4  2  64 128   4   fp32   110,592, FLAGS SPLIT_TRUNC | LATE_REFILL          2
//   mma128xl 128  8  2  4 128 128   4     -    147,456, FLAGS LATE_REFILL                       1
//   mma256wl 256 16  4  4 128 128   3     -    165,888, FLAGS LATE_REFILL                       1
// WM x WN warps (32 * WM * WN threads); BN GEMM columns per block (GATEUP: BN / 2 gate rows of w13
// and the matching BN / 2 up rows); each warp holds MT/WM m16 tiles x NC = BN / (16 WN) B calls of
// two n8 tiles each.
// FAST (fp32 only; see fast_split and the FAST main loop): a 3-instruction TF32 split instead of
// the compiler's cvt.rna emulation (7), one fresh partial sum per stage (BKB / 32 K steps) instead
// of per K step, and the k loop compiled once per count of the warp's m16 tiles that hold rows,
// so that a stage is one basic block the scheduler can interleave (no branch per m16 tile).
// FLAGS (see SPLIT_TRUNC, fp32 FAST only, and LATE_REFILL): a cheaper split, a later refill.
#include "common.cuh"
#include "moe_rows.cuh"

__device__ __forceinline__ void ldsm_x4(unsigned addr, unsigned (&r)[4])
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

__device__ __forceinline__ unsigned tf32_rna(float x)
{
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
}

// An MMA operand as loaded by ldmatrix (4 registers), ready for the element type's MMA: bf16
// uses the registers as they are; fp32 splits each value into its TF32 head and TF32 remainder.
template <typename T> struct Operand {
    unsigned hi[4], lo[4];
    __device__ __forceinline__ void set(const unsigned (&raw)[4])
    {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            if constexpr (sizeof(T) == 4) {
                float x = __uint_as_float(raw[i]);
                hi[i] = tf32_rna(x);
                lo[i] = tf32_rna(x - __uint_as_float(hi[i]));
            } else {
                hi[i] = raw[i];
            }
        }
    }
};

__device__ __forceinline__ void mma_tf32(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// c += a * b[half], where b holds two n8 tiles (registers 0,1 and 2,3).
// fp32: the tensor core's accumulation truncates, and over K = 2048 (768 TF32 MMAs into one
// accumulator) that bias reached 3e-5 of the output scale. So the three MMAs of one K step go into
// a fresh partial sum, which is added to c by an ordinary (round-to-nearest) FADD.
template <typename T>
__device__ __forceinline__ void mma_step(float (&c)[4], const Operand<T>& a, const Operand<T>& b, int half)
{
    if constexpr (sizeof(T) == 4) {
        float t[4] = {0.f, 0.f, 0.f, 0.f};
        mma_tf32(t, a.lo, b.hi[2 * half], b.hi[2 * half + 1]);  // small terms first
        mma_tf32(t, a.hi, b.lo[2 * half], b.lo[2 * half + 1]);
        mma_tf32(t, a.hi, b.hi[2 * half], b.hi[2 * half + 1]);
#pragma unroll
        for (int i = 0; i < 4; ++i) c[i] += t[i];
    } else {
        mma_bf16(c, a.hi, b.hi[2 * half], b.hi[2 * half + 1]);
    }
}

// FAST's TF32 split of an fp32 value (its raw bits): hi = x rounded to TF32 (ties away, as
// cvt.rna; low 13 bits zero), lo = x - hi, exact. lo goes to the MMA unrounded: the tensor core
// reads a TF32 operand's top 19 bits, so lo is truncated there, an error of < 2^-21 of x with the
// sign of lo (random), as CUTLASS's fast 3xTF32 does. 3 instructions instead of cvt.rna's 7
// (sm_90 has no TF32 convert; ptxas emulates it with an Inf check). Not for |x| within 2^-11 of
// FLT_MAX (hi would round to Inf).
__device__ __forceinline__ void fast_split(unsigned x, unsigned& hi, unsigned& lo)
{
    hi = tf32_round_bits(x);
    lo = __float_as_uint(__uint_as_float(x) - __uint_as_float(hi));
}

// Options (a variant's FLAGS; LATE_REFILL is also an option of the bf16 loop):
// SPLIT_TRUNC: hi = x itself (the MMA reads its top 19 bits, i.e. x truncated to TF32), lo = x -
// trunc(x), exact: 2 instructions per value instead of fast_split's 3, and hi needs no register of
// its own (mma128r's 16 warps per SM fit 128 registers only so). |lo| < 2^-10 |x| instead of 2^-11,
// so the truncated lo and the dropped lo*lo term cost ~1.7x fast_split's error (real shape: 1.5e-6
// of the output scale instead of 9e-7; the tests' bound is 2e-5).
// LATE_REFILL: the refill of the freed stage is issued after the stage's first K step and without
// a branch (copies past K zero-fill, as the K tail's do), so that after the barrier the warps go
// to ldmatrix and MMAs instead of first spending ~70 instructions on copy addresses.
#define SPLIT_TRUNC 1
#define LATE_REFILL 2

template <int FLAGS> __device__ __forceinline__ void tf32_split(unsigned x, unsigned& hi, unsigned& lo)
{
    if constexpr (FLAGS & SPLIT_TRUNC) {
        hi = x;
        lo = __float_as_uint(__uint_as_float(x) - __uint_as_float(x & 0xffffe000u));
    } else {
        fast_split(x, hi, lo);
    }
}

// f(IntC<n>{}) for a run-time n in 0..N: one compiled copy of f per count.
template <int N> struct IntC {
    static constexpr int value = N;
};
template <int N, typename F> __device__ __forceinline__ void with_count(int n, F& f)
{
    if constexpr (N == 0) {
        f(IntC<0>{});
    } else {
        if (n >= N)
            f(IntC<N>{});
        else
            with_count<N - 1>(n, f);
    }
}

// Accumulator tiles [m16 tiles][B calls][2 n8 tiles][4] set to 0.
template <int M, int C> __device__ __forceinline__ void zero_tiles(float (&t)[M][C][2][4])
{
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int c = 0; c < C; ++c)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int i = 0; i < 4; ++i) t[m][c][h][i] = 0.f;
}

// Two adjacent outputs (col, col + 1) of one row; vector store when both exist and are aligned.
template <typename T> __device__ __forceinline__ void store_pair(T* row, int col, int N, float v0, float v1)
{
    if (col + 1 < N && (N & 1) == 0) {
        store2<T>(row + col, v0, v1);
    } else {
        if (col < N) row[col] = from_f<T>(v0);
        if (col + 1 < N) row[col + 1] = from_f<T>(v1);
    }
}

template <typename T, int MODE, int MT, int WM, int WN, int BN, int BKB, int STAGES, bool FAST, int FLAGS>
__device__ void moe_stream(const T* A, const T* W, T* out, const int* sorted_pair, const int* tiles,
                           const int* num_tiles, const float* pair_w, int N, int K, int topk)
{
    constexpr int THREADS = 32 * WM * WN;
    constexpr int BM = 16 * MT;
    constexpr int LDB = BKB + 16;                  // smem row pitch (bytes): ldmatrix rows hit distinct banks
    constexpr int CPR = BKB / 16;                  // 16-byte chunks of one row per stage
    constexpr int RPP = THREADS / CPR;             // rows covered by one pass of the block
    constexpr int WCH = BN / RPP, ACH = BM / RPP;  // chunks per thread per stage: weights, rows
    constexpr int STAGE_BYTES = (BN + BM) * LDB;
    constexpr int MTW = MT / WM;                   // m16 tiles per warp
    constexpr int NC = BN / (16 * WN);             // B ldmatrix calls per warp and K step (2 n8 tiles each)
    static_assert(BN % RPP == 0 && BM % RPP == 0 && MT % WM == 0 && BN % (16 * WN) == 0 && (BN & (BN - 1)) == 0,
                  "bad stream variant");
    static_assert(!FAST || sizeof(T) == 4, "FAST is the fp32 path");
    static_assert(!(FLAGS & SPLIT_TRUNC) || FAST, "SPLIT_TRUNC is an option of the FAST loop");

    extern __shared__ __align__(128) unsigned char smem[];
    // Under PDL (common.cuh's rule; moe_wgmma.cu does the same): the gate/up's tile table is the output
    // of the kernel right before (the sort, or norm_route_sort's last block), so it waits first; the
    // down's is two kernels back, finished once every gate/up block has passed its wait and triggered,
    // so the down reads it and puts its first weight stages in flight before it waits for act. With
    // norm_route's sort (router.cu) on an H100: 16 x 16 forward 8.50 -> 8.44 ms of GPU time, 1 x 16
    // 5.22 -> 5.19, batch-64 decode step 6.56 -> 6.53, logits bit-equal.
    if constexpr (MODE == MODE_GATEUP) {
        pdl_wait();
        pdl_trigger();
    }
    if ((int)blockIdx.x >= *num_tiles) return;
    require_dynamic_smem(STAGES * STAGE_BYTES);
    const int e = tiles[3 * blockIdx.x], row0 = tiles[3 * blockIdx.x + 1];
    const int rows = min(tiles[3 * blockIdx.x + 2] - row0, BM);
    const int n0 = blockIdx.y * (MODE == MODE_GATEUP ? BN / 2 : BN);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const size_t kbytes = (size_t)K * sizeof(T);
    const int ktiles = (int)((kbytes + BKB - 1) / BKB);
    const int kc = (tid % CPR) * 16, lrow = tid / CPR;  // this thread's chunk: byte kc of rows lrow + i * RPP

    // ---- weights first: they need only the expert id, so their copies start before the row gather
    const char* w_src[WCH];
    bool w_ok[WCH];
    weight_row_sources<T, MODE, BN, WCH, RPP>(W, e, n0, N, K, lrow, kc, w_src, w_ok);
    auto load_w = [&](int stage, int kt) {
        unsigned char* s = smem + stage * STAGE_BYTES + lrow * LDB + kc;
        const size_t kb = (size_t)kt * BKB;
        const bool kok = kb + kc < kbytes;
#pragma unroll
        for (int i = 0; i < WCH; ++i) cp_async16(s + i * RPP * LDB, w_src[i] + (kok ? kb : 0), w_ok[i] && kok);
    };
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s)
        if (s < ktiles) load_w(s, s);
    if constexpr (MODE == MODE_DOWN) {
        pdl_wait();
        pdl_trigger();
    }

    // ---- the tile's rows (GATEUP gathers h rows of the tokens; DOWN reads act rows in place)
    const char* a_src[ACH];
    bool a_ok[ACH];
    tile_row_sources<T, MODE, ACH, RPP>(A, sorted_pair, row0, rows, K, topk, lrow, kc, a_src, a_ok);
    auto load_a = [&](int stage, int kt) {
        unsigned char* s = smem + stage * STAGE_BYTES + (BN + lrow) * LDB + kc;
        const size_t kb = (size_t)kt * BKB;
        const bool kok = kb + kc < kbytes;
#pragma unroll
        for (int i = 0; i < ACH; ++i) cp_async16(s + i * RPP * LDB, a_src[i] + (kok ? kb : 0), a_ok[i] && kok);
    };
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s)
        if (s < ktiles) load_a(s, s);
    // The prologue is one commit group; STAGES - 2 empty groups keep the loop's wait count right
    // (at step kt the first kt + 1 groups must be complete).
    cp_async_commit();
#pragma unroll
    for (int s = 0; s < STAGES - 2; ++s) cp_async_commit();

    // ---- fragment addresses. B (weights) for call cc: two n8 tiles, lanes 0-15 address the first
    // (GATEUP: gate rows), lanes 16-31 the second (GATEUP: the matching up rows; DOWN: the next 8).
    const int wm = warp / WN, wn = warp % WN;
    const int wb = wn * (MODE == MODE_GATEUP ? 8 * NC : 16 * NC);  // warp's first act / output column
    const int b_row = MODE == MODE_GATEUP ? (lane >> 4) * (BN / 2) + wb + (lane & 7) : wb + (lane >> 4) * 8 + (lane & 7);
    constexpr int B_CALL_ROWS = MODE == MODE_GATEUP ? 8 : 16;
    const unsigned b_off = b_row * LDB + ((lane >> 3) & 1) * 16;
    const unsigned a_off = (BN + wm * MTW * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDB + (lane >> 4) * 16;
    const unsigned sbase = smem_addr(smem);

    float acc[MTW][NC][2][4];
    zero_tiles(acc);

    // stage kt: wait for its copies, refill the stage freed one step ago; its shared address
    auto enter_stage = [&](int kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // stage kt is visible to all; everyone is done with the stage refilled next
        if constexpr (!(FLAGS & LATE_REFILL)) {
            const int nk = kt + STAGES - 1;
            if (nk < ktiles) {
                load_w(nk % STAGES, nk);
                load_a(nk % STAGES, nk);
            }
            cp_async_commit();
        }
        return sbase + (kt % STAGES) * STAGE_BYTES;
    };
    auto late_refill = [&](int kt) {  // (LATE_REFILL) for stages past K every copy zero-fills: no branch
        const int nk = kt + STAGES - 1;
        load_w(nk % STAGES, nk);
        load_a(nk % STAGES, nk);
        cp_async_commit();
    };

    if constexpr (!FAST) {
        for (int kt = 0; kt < ktiles; ++kt) {
            const unsigned st = enter_stage(kt);
#pragma unroll
            for (int ks = 0; ks < BKB; ks += 32) {
                Operand<T> b[NC];
#pragma unroll
                for (int c = 0; c < NC; ++c) {
                    unsigned raw[4];
                    ldsm_x4(st + b_off + c * B_CALL_ROWS * LDB + ks, raw);
                    b[c].set(raw);
                }
#pragma unroll
                for (int m = 0; m < MTW; ++m) {
                    if ((wm * MTW + m) * 16 < rows) {  // warp-uniform: skip m16 tiles with no rows
                        unsigned raw[4];
                        ldsm_x4(st + a_off + m * 16 * LDB + ks, raw);
                        Operand<T> a;
                        a.set(raw);
#pragma unroll
                        for (int c = 0; c < NC; ++c) {
                            mma_step<T>(acc[m][c][0], a, b[c], 0);
                            mma_step<T>(acc[m][c][1], a, b[c], 1);
                        }
                    }
                }
                if constexpr ((FLAGS & LATE_REFILL) != 0)
                    if (ks == 0) late_refill(kt);
            }
        }
    } else {
        // The k loop for NM m16 tiles with rows (a compile-time count, so a stage is one basic block).
        // The 3 * BKB / 32 MMAs of a stage (24 at BKB = 256) chain into a fresh partial, added to acc
        // with round-to-nearest FADDs once per stage: the tensor core's truncating accumulation then
        // biases a partial of 24 MMAs (~1e-6 of it), not the whole sum (see mma_step). Measured at
        // the real shape (K = 2048 and 1792): max error 9e-7 of the output scale, the per-K-step
        // partial of mma128_f32 7.9e-7.
        auto loop = [&](auto nm_c) {
            constexpr int NM = decltype(nm_c)::value;
            for (int kt = 0; kt < ktiles; ++kt) {
                const unsigned st = enter_stage(kt);
                if constexpr (NM > 0) {
                    float part[NM][NC][2][4];
                    zero_tiles(part);
#pragma unroll
                    for (int ks = 0; ks < BKB; ks += 32) {
                        unsigned bh[NC][4], bl[NC][4];
#pragma unroll
                        for (int c = 0; c < NC; ++c) {
                            unsigned raw[4];
                            ldsm_x4(st + b_off + c * B_CALL_ROWS * LDB + ks, raw);
#pragma unroll
                            for (int i = 0; i < 4; ++i) tf32_split<FLAGS>(raw[i], bh[c][i], bl[c][i]);
                        }
#pragma unroll
                        for (int m = 0; m < NM; ++m) {
                            unsigned raw[4], ah[4], al[4];
                            ldsm_x4(st + a_off + m * 16 * LDB + ks, raw);
#pragma unroll
                            for (int i = 0; i < 4; ++i) tf32_split<FLAGS>(raw[i], ah[i], al[i]);
#pragma unroll
                            for (int c = 0; c < NC; ++c)
#pragma unroll
                                for (int h = 0; h < 2; ++h) {
                                    float(&t)[4] = part[m][c][h];
                                    mma_tf32(t, al, bh[c][2 * h], bh[c][2 * h + 1]);  // small terms first
                                    mma_tf32(t, ah, bl[c][2 * h], bl[c][2 * h + 1]);
                                    mma_tf32(t, ah, bh[c][2 * h], bh[c][2 * h + 1]);
                                }
                        }
                        if constexpr ((FLAGS & LATE_REFILL) != 0)
                            if (ks == 0) late_refill(kt);
                    }
#pragma unroll
                    for (int m = 0; m < NM; ++m)
#pragma unroll
                        for (int c = 0; c < NC; ++c)
#pragma unroll
                            for (int h = 0; h < 2; ++h)
#pragma unroll
                                for (int i = 0; i < 4; ++i) acc[m][c][h][i] += part[m][c][h][i];
                } else if constexpr ((FLAGS & LATE_REFILL) != 0) {
                    late_refill(kt);
                }
            }
        };
        const int nm = min(max((rows - wm * MTW * 16 + 15) / 16, 0), MTW);  // warp-uniform
        with_count<MTW>(nm, loop);
    }
    cp_async_wait<0>();

    // ---- epilogue: accumulator element i of an n8 tile is (row g + 8 * (i >> 1), column 2 t + (i & 1))
    const int g = lane >> 2, t2 = (lane & 3) * 2;
#pragma unroll
    for (int m = 0; m < MTW; ++m)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const int r = (wm * MTW + m) * 16 + g + hr * 8;
            if (r >= rows) continue;
            const int pos = row0 + r;
            if (MODE == MODE_GATEUP) {
                T* dst = out + (size_t)pos * N;
#pragma unroll
                for (int c = 0; c < NC; ++c) {
                    float v[2];
#pragma unroll
                    for (int q = 0; q < 2; ++q) {
                        const float gt = acc[m][c][0][2 * hr + q], up = acc[m][c][1][2 * hr + q];
                        v[q] = rnd<T>(rnd<T>(silu_f(rnd<T>(gt))) * rnd<T>(up));
                    }
                    store_pair<T>(dst, n0 + wb + c * 8 + t2, N, v[0], v[1]);
                }
            } else {
                const int p = sorted_pair[pos];
                const float s = rnd<T>(pair_w[p]);
                T* dst = out + (size_t)p * N;
#pragma unroll
                for (int c = 0; c < NC; ++c)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        store_pair<T>(dst, n0 + wb + c * 16 + h * 8 + t2, N, rnd<T>(acc[m][c][h][2 * hr]) * s,
                                      rnd<T>(acc[m][c][h][2 * hr + 1]) * s);
            }
        }
}

// NAME, element type, MT, WM, WN, BN, BKB, STAGES, FAST, FLAGS, then __launch_bounds__'s arguments (threads
// = 32 WM WN, and for some the blocks per SM the registers must allow; an explicit 1 changes ptxas's code)
#define STREAM_VARIANT(NAME, T, MT, WM, WN, BN, BKB, STAGES, FAST, FLAGS, ...)                                       \
    extern "C" __global__ void __launch_bounds__(__VA_ARGS__) moe_gateup_##NAME(                                     \
        const T* h, const T* w13, T* act, const int* sorted_pair, const int* tiles, const int* num_tiles, int N,     \
        int K, int topk)                                                                                             \
    {                                                                                                                \
        moe_stream<T, MODE_GATEUP, MT, WM, WN, BN, BKB, STAGES, FAST, FLAGS>(h, w13, act, sorted_pair, tiles,        \
                                                                             num_tiles, nullptr, N, K, topk);        \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(__VA_ARGS__) moe_down_##NAME(                                       \
        const T* act, const T* w2, T* ys, const int* sorted_pair, const int* tiles, const int* num_tiles,            \
        const float* pair_w, int N, int K)                                                                           \
    {                                                                                                                \
        moe_stream<T, MODE_DOWN, MT, WM, WN, BN, BKB, STAGES, FAST, FLAGS>(act, w2, ys, sorted_pair, tiles,          \
                                                                           num_tiles, pair_w, N, K, 1);              \
    }

STREAM_VARIANT(mma16_bf16, bf16, 1, 1, 4, 64, 256, 4, false, 0, 128)
STREAM_VARIANT(mma16b_bf16, bf16, 1, 1, 4, 64, 256, 3, false, 0, 128)
STREAM_VARIANT(mma16c_bf16, bf16, 1, 1, 4, 64, 128, 6, false, 0, 128)
STREAM_VARIANT(mma32_bf16, bf16, 2, 1, 4, 64, 256, 4, false, 0, 128)
STREAM_VARIANT(mma64_bf16, bf16, 4, 1, 4, 64, 256, 3, false, 0, 128)
STREAM_VARIANT(mma128_bf16, bf16, 8, 2, 2, 64, 128, 4, false, 0, 128)
STREAM_VARIANT(mma128xl_bf16, bf16, 8, 2, 4, 128, 128, 4, false, LATE_REFILL, 256)
STREAM_VARIANT(mma256wl_bf16, bf16, 16, 4, 4, 128, 128, 3, false, LATE_REFILL, 512)
STREAM_VARIANT(mma16_f32, float, 1, 1, 4, 64, 256, 4, false, 0, 128)
STREAM_VARIANT(mma32_f32, float, 2, 1, 4, 64, 256, 4, false, 0, 128)
STREAM_VARIANT(mma64_f32, float, 4, 1, 4, 64, 256, 3, false, 0, 128)
STREAM_VARIANT(mma128_f32, float, 8, 2, 2, 64, 128, 4, false, 0, 128)
STREAM_VARIANT(mma16f_f32, float, 1, 1, 4, 64, 256, 4, true, 0, 128)
STREAM_VARIANT(mma64f_f32, float, 4, 1, 4, 64, 256, 3, true, 0, 128)
STREAM_VARIANT(mma128f_f32, float, 8, 2, 4, 128, 256, 3, true, 0, 256)
STREAM_VARIANT(mma64fl_f32, float, 4, 1, 4, 64, 256, 3, true, LATE_REFILL, 128)
STREAM_VARIANT(mma128tl_f32, float, 8, 2, 4, 128, 256, 3, true, SPLIT_TRUNC | LATE_REFILL, 256)
STREAM_VARIANT(mma128r_f32, float, 8, 4, 2, 64, 128, 4, true, SPLIT_TRUNC | LATE_REFILL, 256, 2)
