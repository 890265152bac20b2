// The baseline's GPU kernels, written for clarity like the original's tensor.cu / layer.cu.
// float32 throughout. Names are unmangled (extern "C") so PyCUDA finds them.

#define TILE 32

// C[M,N] = A[M,K] @ B[N,K]^T  (B is a PyTorch-convention weight [out, in]).
// 32x32 shared-memory tiles, one output per thread, block (32, 32).
// The B tile is loaded as the original did: thread (ty, tx) reads B[col][k0 + ty] with
// col = n0 + tx, so the 32 threads of a warp read 32 different rows of B, K floats apart
// (uncoalesced). performance.md measures this against a coalesced load.
extern "C" __global__ void matmul(const float* A, const float* B, float* C, int M, int N, int K)
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
