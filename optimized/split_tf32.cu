// Split fp32 activations for the 3xTF32 dense GEMMs (optimized/split_tf32.py): each row a[r] of
// [rows, K] (row stride lda) becomes out[r] = [hi | lo], 2K floats (the GEMM operand that meets
// the weight's [wl | wh]), with hi = a rounded to the nearest TF32 value (10 mantissa bits; ties
// away from zero, as cvt.rna.tf32.f32) and lo = a - hi, exact in fp32.
// hi has its low 13 mantissa bits zero, so the tensor core reads it unchanged whether it truncates
// or rounds its fp32 inputs. Non-finite values: hi keeps an infinity, a NaN becomes the canonical
// 0x7fffffff; lo = 0 (a - hi would be NaN for both).
// split_tf32() in split_tf32.py is the same arithmetic in torch (the GPU tests compare bit for bit).
#include "common.cuh"

__device__ __forceinline__ float tf32_hi(float x)
{
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x007fffffu) ? __uint_as_float(0x7fffffffu) : x;
    return __uint_as_float(tf32_round_bits(u));
}

__device__ __forceinline__ float tf32_lo(float x, float hi)
{
    return isfinite(x) ? __fsub_rn(x, hi) : 0.f;
}

// One thread per 4 columns of one row: K % 4 == 0, lda % 4 == 0, a and out on 16 bytes.
extern "C" __global__ void split_tf32_vec4(const float* a, int lda, float* out, int rows, int K)
{
    const int q = K >> 2;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * q) return;
    const int r = (int)(i / q), c = (int)(i - (long long)r * q) * 4;
    const float4 v = *reinterpret_cast<const float4*>(a + (size_t)r * lda + c);
    const float4 h = make_float4(tf32_hi(v.x), tf32_hi(v.y), tf32_hi(v.z), tf32_hi(v.w));
    const float4 l = make_float4(tf32_lo(v.x, h.x), tf32_lo(v.y, h.y), tf32_lo(v.z, h.z), tf32_lo(v.w, h.w));
    float* o = out + (size_t)r * 2 * K + c;
    *reinterpret_cast<float4*>(o) = h;
    *reinterpret_cast<float4*>(o + K) = l;
}

// Any K, lda and alignment: one thread per element.
extern "C" __global__ void split_tf32_any(const float* a, int lda, float* out, int rows, int K)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * K) return;
    const int r = (int)(i / K), c = (int)(i - (long long)r * K);
    const float x = a[(size_t)r * lda + c], h = tf32_hi(x);
    float* o = out + (size_t)r * 2 * K + c;
    o[0] = h;
    o[K] = tf32_lo(x, h);
}
