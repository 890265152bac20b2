// Phase 4's kernels: the residual add, so activations never leave the GPU between blocks (phases
// 0-3 added residuals on the host because the activations went there anyway), and the expert
// GEMMs sized on the device (below).

extern "C" __global__ void add_inplace(float* x, const float* y, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] += y[i];
}

// ---- device-sized expert GEMMs: the MoE block without the per-layer expert-count download ----
// Phase 2 brings each MoE layer's E expert counts to the host, which sizes every expert's GEMMs
// from them. Here the counts stay on the device: the host launches all E experts with a grid
// sized for the most rows an expert can get (every token once: top-k experts are distinct), and
// each block reads its expert's row range and returns at once when it has no rows to compute.
// The arithmetic is the baseline's tiled GEMM and phase 2's silu_mul, so the logits are the same
// bits as phases 2-3's.
#include "../../baseline/matmul_tile.cuh"
#include "../phase2/silu_mul.cuh"

// offsets[e] = counts[0] + ... + counts[e-1], offsets[E] = the total. One thread: E is 32.
extern "C" __global__ void expert_offsets(const int* counts, int* offsets, int E)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        int total = 0;
        for (int e = 0; e < E; ++e) {
            offsets[e] = total;
            total += counts[e];
        }
        offsets[E] = total;
    }
}

// C = A @ B^T over expert e's rows: M = offsets[e + 1] - offsets[e]. A (and C) start at the
// expert's first grouped row when a_grouped (c_grouped) is set, else at row 0 (a per-expert
// scratch). Grid (N / 32, most rows / 32), block (32, 32); blocks past M return before loading.
extern "C" __global__ void matmul_expert_rows(const float* A, const float* B, float* C, const int* offsets, int e,
                                              int a_grouped, int c_grouped, int N, int K)
{
    const int first = offsets[e], M = offsets[e + 1] - first;
    if ((int)blockIdx.y * TILE >= M)
        return;  // the whole block: no thread reaches the tile loop's barriers
    if (a_grouped)
        A += (size_t)first * K;
    if (c_grouped)
        C += (size_t)first * N;
    matmul_tile(A, B, C, M, N, K);
}

// gate = silu(gate) * up over expert e's M rows of I columns (per-expert scratch, from row 0).
extern "C" __global__ void silu_mul_expert_rows(float* gate, const float* up, const int* offsets, int e, int I)
{
    const int n = (offsets[e + 1] - offsets[e]) * I;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        gate[i] = silu_mul_value(gate[i], up[i]);
}
