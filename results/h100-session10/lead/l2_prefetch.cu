// Session 10 probe kernel: prefetch `bytes` from p into L2 with the evict-last priority, one
// 128-byte line per instruction, fire and forget (nothing waits for the lines).
extern "C" __global__ void l2_prefetch(const char* p, unsigned long long bytes)
{
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x * 128;
    for (unsigned long long i = ((unsigned long long)blockIdx.x * blockDim.x + threadIdx.x) * 128; i < bytes; i += stride)
        asm volatile("prefetch.global.L2::evict_last [%0];" ::"l"(p + i));
}
