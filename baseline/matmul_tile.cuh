// The baseline's tiled GEMM as a device function, so later phases can run the same arithmetic
// (bit for bit) on row ranges they choose on the device (phase 4's device-sized expert GEMMs).
#pragma once

#ifndef TILE
#define TILE 32
#endif

// C[M,N] = A[M,K] @ B[N,K]^T  (B is a PyTorch-convention weight [out, in]).
// 32x32 shared-memory tiles, one output per thread, block (32, 32).
// The B tile is loaded as the original did: thread (ty, tx) reads B[col][k0 + ty] with
// col = n0 + tx, so the 32 threads of a warp read 32 different rows of B, K floats apart
// (uncoalesced): 233 vs 350 GB/s of weights for a coalesced load at 16 x 6144 x 2048 on an H100.
__device__ __forceinline__ void matmul_tile(const float* A, const float* B, float* C, int M, int N, int K)
{
    __shared__ float As[TILE][TILE];
    __shared__ float Bs[TILE][TILE];

    int tx = threadIdx.x, ty = threadIdx.y;
    int row = blockIdx.y * TILE + ty;   // index into M
    int col = blockIdx.x * TILE + tx;   // index into N
    float sum = 0.0f;

    for (int k0 = 0; k0 < K; k0 += TILE) {
        As[ty][tx] = (row < M && k0 + tx < K) ? A[(size_t)row * K + k0 + tx] : 0.0f;
        Bs[ty][tx] = (col < N && k0 + ty < K) ? B[(size_t)col * K + k0 + ty] : 0.0f;
        __syncthreads();
        for (int i = 0; i < TILE; ++i)
            sum += As[ty][i] * Bs[i][tx];
        __syncthreads();
    }
    if (row < M && col < N)
        C[(size_t)row * N + col] = sum;
}
