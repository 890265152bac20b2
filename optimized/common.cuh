// Shared helpers of the optimized engine's kernels: dtype conversion (float or bf16 storage,
// float math), warp reductions. Every kernel is a template over the storage type T and is
// instantiated under an unmangled name per dtype (suffix _f32 / _bf16).
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<bf16>(bf16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float v) { return __float2bfloat16_rn(v); }

// Round a float to what storage type T can hold (HF rounds after each bf16 op; fp32: identity).
template <typename T> __device__ __forceinline__ float rnd(float v) { return to_f<T>(from_f<T>(v)); }

// The bits of a finite fp32 value rounded to the nearest TF32 value (10 mantissa bits, ties away
// from zero, as cvt.rna.tf32.f32): add half a TF32 ulp to the magnitude, clear the low 13 bits.
// The 3xTF32 splits (moe_stream.cu's fast_split, split_tf32.cu) take hi from it.
__device__ __forceinline__ unsigned tf32_round_bits(unsigned u) { return (u + 0x1000u) & 0xffffe000u; }

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Programmatic dependent launch (harness/gpu/pdl.py; no-ops when a kernel is launched without it).
// pdl_wait: block until the kernel before this one on the stream has finished and its writes are
// visible; nothing an earlier kernel writes may be read or written before it. pdl_trigger: let the
// next kernel start; only ever after pdl_wait, so that when a kernel starts, every kernel before
// its predecessor has finished (the MoE down GEMV relies on it to read the routing early).
// What earlier kernels write must be read with coherent loads (plain or __ldcg), never __ldg or
// `const __restrict__` (ld.global.nc): the read-only path assumes the data does not change while
// the kernel lives, and a PDL kernel lives beside the one writing it: __ldg'd GEMV inputs under PDL
// read stale activations (wrong logits). Weights may use either path.
__device__ __forceinline__ void pdl_wait()
{
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger()
{
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// ----- the sum of one value per thread over the block (blockDim a multiple of 32, <= 1024) -------
// Every thread gets the total; `partial` is the caller's __shared__ float[32]. The last barrier lets
// a caller sum again with the same `partial` (norm_route_split, one sum per token): without it a
// fast warp's next partial[0] overwrites the total before a slow warp has read it (a wrong second
// row in a batch-2 test of a fused norm).
__device__ __forceinline__ float block_sum(float v, float* partial)
{
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float s = threadIdx.x < (blockDim.x >> 5) ? partial[threadIdx.x] : 0.f;
        s = warp_sum(s);
        if (threadIdx.x == 0) partial[0] = s;
    }
    __syncthreads();
    const float total = partial[0];
    __syncthreads();
    return total;
}

__device__ __forceinline__ float silu_f(float g) { return g / (1.0f + expf(-g)); }

// c += a (16x16, row-major) * b (16x8, col-major): bf16 in, fp32 accumulators (moe_stream.cu, attention_mma.cu)
__device__ __forceinline__ void mma_bf16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The shared-window address of a pointer into shared memory (what ldmatrix, cp.async, wgmma take).
__device__ __forceinline__ unsigned smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// A kernel whose shared-memory layout the host sizes (kernels.py's tables) traps when it was given
// less dynamic shared memory than `bytes`: the host's table disagrees with the .cu file.
__device__ __forceinline__ void require_dynamic_smem(unsigned bytes)
{
    unsigned dyn;
    asm("mov.u32 %0, %%dynamic_smem_size;\n" : "=r"(dyn));
    if (dyn < bytes) __trap();
}

// cp.async (sm_80+): 16-byte global -> shared copies that bypass registers and L1 (.cg), in
// commit groups; wait_group<N> returns once at most N of this thread's groups are in flight.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid)
{
    unsigned s = smem_addr(smem);
    int bytes = valid ? 16 : 0;  // 0: the 16 bytes are zero-filled, nothing is read
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// ----- the ShortConv decode step of one channel c (HF's conv state) ----------------------------------------
// From its in_proj outputs B, C, x (already rounded to T): Bx = B*x, conv = sum_{j < L-1} w[c, j] *
// state[j] + w[c, L-1] * Bx (the taps in the prefill's order, so the fp32 sum is the prefill's),
// *y = C * conv; then the state column st (stride H) drops its oldest entry and takes Bx. Shared by
// decode.cu's conv_step (B, C, x read from in_proj's output) and gemv.cu's conv_in_step (computed).
template <typename T>
__device__ __forceinline__ void conv_step_channel(float bv, float cv, float xv, const T* conv_w, T* st, T* y, int c,
                                                  int H, int L)
{
    const float bx = rnd<T>(bv * xv);
    float acc = 0.f;
    for (int j = 0; j < L - 1; ++j) acc += to_f<T>(conv_w[c * L + j]) * to_f<T>(st[(size_t)j * H]);
    acc += to_f<T>(conv_w[c * L + L - 1]) * bx;
    *y = from_f<T>(cv * rnd<T>(acc));
    for (int j = 0; j + 1 < L - 1; ++j) st[(size_t)j * H] = st[(size_t)(j + 1) * H];
    if (L > 1) st[(size_t)(L - 2) * H] = from_f<T>(bx);
}

// ----- q/k RMSNorm + RoPE of one head vector at position pos (one warp) -------------------------------
// Shared by elementwise.cu's qk_norm_rope (prefill) and decode.cu's qk_norm_rope_step (decode), so
// the two agree bit for bit in fp32. Needs warp_sum, to_f, from_f and rnd from above.
template <typename T>
__device__ void norm_rope_head(const T* src, const T* w, T* dst, int hd, float eps, float theta, int pos, int lane)
{
    const int half = hd / 2;
    float ss = 0.f;
    for (int d = lane; d < hd; d += 32) { float x = to_f<T>(src[d]); ss += x * x; }
    const float rstd = rsqrtf(warp_sum(ss) / hd + eps);
    for (int p = lane; p < half; p += 32) {  // the pair (p, p + half) rotates together
        float x1 = to_f<T>(w[p]) * rnd<T>(to_f<T>(src[p]) * rstd);
        float x2 = to_f<T>(w[p + half]) * rnd<T>(to_f<T>(src[p + half]) * rstd);
        x1 = rnd<T>(x1);
        x2 = rnd<T>(x2);
        float inv_freq = 1.0f / powf(theta, (float)(2 * p) / (float)hd);
        float ang = (float)pos * inv_freq;
        float cs = rnd<T>(cosf(ang)), sn = rnd<T>(sinf(ang));
        dst[p] = from_f<T>(rnd<T>(x1 * cs) + rnd<T>(-x2 * sn));
        dst[p + half] = from_f<T>(rnd<T>(x2 * cs) + rnd<T>(x1 * sn));
    }
}

// ----- 8 contiguous values of T <-> 8 floats, one or two 16-byte accesses (add_norm_vec8, norm_route_split) --
// Two adjacent values, one 4- or 8-byte access (p aligned to two elements).
template <typename T> __device__ __forceinline__ float2 load2(const T* p);
template <> __device__ __forceinline__ float2 load2<float>(const float* p) { return *reinterpret_cast<const float2*>(p); }
template <> __device__ __forceinline__ float2 load2<bf16>(const bf16* p)
{
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}
template <typename T> __device__ __forceinline__ void store2(T* p, float a, float b);
template <> __device__ __forceinline__ void store2<float>(float* p, float a, float b)
{
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
template <> __device__ __forceinline__ void store2<bf16>(bf16* p, float a, float b)
{
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}
template <typename T> __device__ __forceinline__ void load8(const T* p, float* out);
template <> __device__ __forceinline__ void load8<float>(const float* p, float* out)
{
    float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w; out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
}
template <> __device__ __forceinline__ void load8<bf16>(const bf16* p, float* out)
{
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    const bf16* v = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = __bfloat162float(v[i]);
}
template <typename T> __device__ __forceinline__ void store8(T* p, const float* in);
template <> __device__ __forceinline__ void store8<float>(float* p, const float* in)
{
    reinterpret_cast<float4*>(p)[0] = make_float4(in[0], in[1], in[2], in[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(in[4], in[5], in[6], in[7]);
}
template <> __device__ __forceinline__ void store8<bf16>(bf16* p, const float* in)
{
    uint4 raw;
    bf16* v = reinterpret_cast<bf16*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = __float2bfloat16_rn(in[i]);
    *reinterpret_cast<uint4*>(p) = raw;
}

// ----- add_norm's arithmetic on one thread's 8 contiguous columns (add_norm_vec8, norm_route_split) --
// v = x + (the NADD addend rows at `y`, `ystride` apart, summed in order first); returns this
// thread's share of the sum of squares. Every load is issued before the first add.
template <typename T, int NADD>
__device__ __forceinline__ float add_rows8(const float* xr, const T* y, size_t ystride, float (&v)[8])
{
    float add[NADD > 0 ? NADD : 1][8];
    load8<float>(xr, v);
#pragma unroll
    for (int j = 0; j < NADD; ++j) load8<T>(y + j * ystride, add[j]);
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        float a = 0.f;
#pragma unroll
        for (int j = 0; j < NADD; ++j) a += add[j][i];
        v[i] += a;
        ss += v[i] * v[i];
    }
    return ss;
}
// h = w * (v * rstd rounded to T), rounded to T: the normed row as HF rounds it
template <typename T>
__device__ __forceinline__ void store_normed8(T* h, const float (&wv)[8], const float (&v)[8], float rstd)
{
    float out[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = wv[i] * rnd<T>(v[i] * rstd);
    store8<T>(h, out);
}
