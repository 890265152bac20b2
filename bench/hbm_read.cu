// HBM read kernels for bench/hbm_read.py. Each block reads its own contiguous slice of the window and
// writes the xor of the slice's 32-bit words to out[block]: the check, and what keeps the compiler
// from dropping the loads.
//   ldg<U>:   each lane issues U 16-byte streaming loads (__ldcs) before using any, as gemv.cu streams
//             its weights; blocks of 256 threads, U x 4 KB per block
//   bulk<KB>: one thread issues cp.async.bulk (TMA, 1-D) copies of KB KB into shared memory, completing on
//             an mbarrier; then the whole block reads them from shared memory (sm_90 and later)
#include <cstdint>

__device__ __forceinline__ unsigned block_xor(unsigned v)
{
    __shared__ unsigned part[32];
    for (int o = 16; o; o >>= 1) v ^= __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    v = 0;
    if (threadIdx.x == 0)
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) v ^= part[w];
    return v;
}

template <int U>
__device__ __forceinline__ void ldg(const uint4* src, unsigned* out)
{
    const uint4* p = src + (size_t)blockIdx.x * 256 * U + threadIdx.x;
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = __ldcs(p + u * 256);
    unsigned s = 0;
#pragma unroll
    for (int u = 0; u < U; ++u) s ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    s = block_xor(s);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}
extern "C" __global__ void __launch_bounds__(256) ldg4(const uint4* s, unsigned* o) { ldg<4>(s, o); }
extern "C" __global__ void __launch_bounds__(256) ldg8(const uint4* s, unsigned* o) { ldg<8>(s, o); }
extern "C" __global__ void __launch_bounds__(256, 2) ldg16(const uint4* s, unsigned* o) { ldg<16>(s, o); }

template <int KB>
__device__ void bulk(const char* src, unsigned* out)
{
#if __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) char smem[];
    __shared__ __align__(8) unsigned long long bar;
    const unsigned sbar = (unsigned)__cvta_generic_to_shared(&bar);
    const char* p = src + (size_t)blockIdx.x * KB * 1024;
    if (threadIdx.x == 0) {
        asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(sbar));
        asm volatile("fence.mbarrier_init.release.cluster;");
        asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;" ::"r"(sbar), "r"(KB * 1024));
#pragma unroll
        for (int c = 0; c < KB / 16; ++c)
            asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], 16384, [%2];"
                         ::"r"((unsigned)__cvta_generic_to_shared(smem + c * 16384)), "l"(p + c * 16384), "r"(sbar)
                         : "memory");
    }
    __syncthreads();
    unsigned done = 0;
    while (!done)
        asm volatile("{ .reg .pred P; mbarrier.try_wait.parity.shared.b64 P, [%1], 0; selp.u32 %0, 1, 0, P; }"
                     : "=r"(done) : "r"(sbar) : "memory");
    const uint4* w = reinterpret_cast<const uint4*>(smem);
    unsigned s = 0;
    for (int i = threadIdx.x; i < KB * 64; i += blockDim.x) {
        const uint4 x = w[i];
        s ^= x.x ^ x.y ^ x.z ^ x.w;
    }
    s = block_xor(s);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
#endif
}
extern "C" __global__ void __launch_bounds__(256) bulk32(const char* s, unsigned* o) { bulk<32>(s, o); }
extern "C" __global__ void __launch_bounds__(256) bulk64(const char* s, unsigned* o) { bulk<64>(s, o); }
