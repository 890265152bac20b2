// Session 10 microbenchmark: how fast can one launch stream a MoE layer's bytes (88 MB) from HBM?
//   ldg<U>:  the decode GEMVs' way: each lane issues U 16-byte loads (registers) before using any;
//            8 warps per block, one pass, then a warp sum (as gemv.cu's dot_rows)
//   bulk<KB>: one thread per block issues cp.async.bulk (TMA, 1-D) copies of KB KB into shared
//            memory, completing on an mbarrier; then the block sums a few words (as a GEMV would
//            read its weights from shared memory)
// out[blockIdx] keeps the compiler honest.
#include <cstdint>
template <int U>
__device__ __forceinline__ void ldg(const uint4* src, float* out)
{
    const uint4* p = src + (size_t)blockIdx.x * 256 * U + threadIdx.x;
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = __ldcs(p + u * 256);
    unsigned s = 0;
#pragma unroll
    for (int u = 0; u < U; ++u) s ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    if (s == 0x12345678u) out[blockIdx.x] = 1.f;
}
extern "C" __global__ void __launch_bounds__(256, 2) ldg16(const uint4* s, float* o) { ldg<16>(s, o); }
extern "C" __global__ void __launch_bounds__(256) ldg8(const uint4* s, float* o) { ldg<8>(s, o); }
extern "C" __global__ void __launch_bounds__(256) ldg4(const uint4* s, float* o) { ldg<4>(s, o); }

template <int KB>
__device__ void bulk(const char* src, float* out)
{
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
    const unsigned* w = reinterpret_cast<const unsigned*>(smem);
    unsigned s = 0;
    for (int i = threadIdx.x; i < KB * 256; i += blockDim.x * 16) s ^= w[i];
    if (s == 0x12345678u) out[blockIdx.x] = 1.f;
}
extern "C" __global__ void __launch_bounds__(256) bulk32(const char* s, float* o) { bulk<32>(s, o); }
extern "C" __global__ void __launch_bounds__(256) bulk64(const char* s, float* o) { bulk<64>(s, o); }
