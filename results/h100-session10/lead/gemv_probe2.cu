// Session 10 probe kernels (timing A/B only): gemv.cu's MoE GEMVs under tighter launch bounds, i.e.
// more blocks per SM (gate/up: 98 registers, 2 blocks of 256 threads per SM as built; down: 52, 4).
#include "gemv.cu"
#define PROBE_GATEUP(NAME, MINB)                                                                                \
    extern "C" __global__ void __launch_bounds__(GV_WARPS * 32, MINB)                                           \
        NAME(const bf16* h, const bf16* w13, bf16* act, const int* idx, int topk, int N, int K)                 \
    { moe_gemv_gateup<bf16>(h, w13, act, idx, topk, N, K); }
#define PROBE_DOWN(NAME, MINB)                                                                                  \
    extern "C" __global__ void __launch_bounds__(GV_WARPS * 32, MINB)                                           \
        NAME(const bf16* act, const bf16* w2, bf16* ys, const int* idx, const float* wts, int N, int K)         \
    { moe_gemv_down<bf16>(act, w2, ys, idx, wts, N, K); }
PROBE_GATEUP(gateup_lb3, 3)
PROBE_DOWN(down_lb5, 5)
PROBE_DOWN(down_lb6, 6)
