// The grouped MoE GEMMs' two modes (moe_gemm.cu, moe_stream.cu, moe_wgmma.cu), and where a block's
// 16-byte copies come from (moe_stream.cu, moe_wgmma.cu): a thread copies byte kc of block rows
// lrow + i * RPP. Weight rows: the block's BN GEMM columns of expert e from column n0 (GATEUP: BN / 2
// gate rows of w13 and the matching up rows N further; DOWN: BN rows of w2). Tile rows: GATEUP gathers
// the h rows of the tokens of sorted rows row0.., DOWN reads act rows in place. Sources past the
// columns or rows are marked not ok (their copies zero-fill) and point at row 0.
#pragma once

#define MODE_GATEUP 0
#define MODE_DOWN 1

template <typename T, int MODE, int BN, int WCH, int RPP>
__device__ __forceinline__ void weight_row_sources(const T* W, int e, int n0, int N, int K, int lrow, int kc,
                                                   const char* (&src)[WCH], bool (&ok)[WCH])
{
    const size_t kbytes = (size_t)K * sizeof(T);
    const char* We = reinterpret_cast<const char*>(W + (size_t)e * (MODE == MODE_GATEUP ? 2 * N : N) * K);
#pragma unroll
    for (int i = 0; i < WCH; ++i) {
        const int j = lrow + i * RPP;  // GEMM column of the slab
        const int col = n0 + (MODE == MODE_GATEUP ? (j & (BN / 2 - 1)) : j);
        ok[i] = col < N;
        const int wrow = MODE == MODE_GATEUP ? (j < BN / 2 ? col : N + col) : col;
        src[i] = We + (size_t)(ok[i] ? wrow : 0) * kbytes + kc;
    }
}

template <typename T, int MODE, int ACH, int RPP>
__device__ __forceinline__ void tile_row_sources(const T* A, const int* sorted_pair, int row0, int rows, int K,
                                                 int topk, int lrow, int kc, const char* (&src)[ACH], bool (&ok)[ACH])
{
#pragma unroll
    for (int i = 0; i < ACH; ++i) {
        const int r = lrow + i * RPP;
        ok[i] = r < rows;
        const int pos = row0 + (ok[i] ? r : 0);
        const T* row = MODE == MODE_GATEUP ? A + (size_t)(sorted_pair[pos] / topk) * K : A + (size_t)pos * K;
        src[i] = reinterpret_cast<const char*>(row) + kc;
    }
}
