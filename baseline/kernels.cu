// The baseline's GPU kernels, written for clarity like the original's tensor.cu / layer.cu.
// float32 throughout. Names are unmangled (extern "C") so PyCUDA finds them.

#include "matmul_tile.cuh"  // TILE and the GEMM body

// C[M,N] = A[M,K] @ B[N,K]^T: matmul_tile.cuh. Grid (N/32, M/32), block (32, 32).
extern "C" __global__ void matmul(const float* A, const float* B, float* C, int M, int N, int K)
{
    matmul_tile(A, B, C, M, N, K);
}

// y = silu(x) = x / (1 + exp(-x)), elementwise over n values.
extern "C" __global__ void silu(const float* x, float* y, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = x[i] / (1.0f + expf(-x[i]));
}

// out = a * b, elementwise over n values.
extern "C" __global__ void mul(const float* a, const float* b, float* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = a[i] * b[i];
}
