// silu(g) * u with the baseline's silu and mul kernels' float operations, in their order; shared by
// phase 2's silu_mul and phase 4's device-sized variant so both round identically.
#pragma once

__device__ __forceinline__ float silu_mul_value(float g, float u)
{
    float act = g / (1.0f + expf(-g));
    return __fmul_rn(act, u);
}
