// Phase 4's one new kernel: the residual add, so activations never leave the GPU between blocks.
// (Phases 0-3 added residuals on the host because the activations went there anyway.)

extern "C" __global__ void add_inplace(float* x, const float* y, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] += y[i];
}
