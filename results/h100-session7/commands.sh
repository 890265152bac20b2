# Session 7 (2026-11-24) GPU calls, one H100 80GB HBM3 (driver 580.159.04). Each ran from .snap = git archive of 989399b
# plus the files below (/work/snap.sh or /work/mysnap.sh), .devwheels carried; the command was `cd .snap && bash gpu_callN.sh` (call 3: python gpu_moe_exp.py).
# call 4 failed on a name clash in the first fused-MoE launcher (a flag named like the method; fixed for call 5).
# call 5 ran 989399b + call5-fused-moe-gemv.patch (reverted afterwards: slower).
# ===== gpu_call1.sh
set -x
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes 64x16 --moe-variants auto,mma64,mma128,wmma128 --profile 64x16 > $OUT/fp32-64x16.log 2>&1
python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x16,8x512 --profile 1x16 --profile 8x512 --decode 1 > $OUT/bf16.log 2>&1
grep -E "ms |tok/s|%" $OUT/fp32-64x16.log | head -60
grep -E "ms |tok/s|%" $OUT/bf16.log | head -90
# ===== gpu_call2.sh
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes 64x16 --iters 5 --profile 64x16 > $OUT/fp32-64x16-profile.log 2>&1
tail -30 $OUT/fp32-64x16-profile.log
# ===== gpu_moe_exp.cu
// Experiment (session 7): why the bf16 batch-1 MoE GEMVs stream at ~2.4 TB/s while fp32 reaches ~2.8.
// Versions of moe_gemv_gateup / moe_gemv_down (gemv.cu) differing only in how weights are read:
//   LD 0: __ldcs (as gemv.cu)           LD 1: ld.global.nc.L1::no_allocate.L2::256B
//   LD 2: ld.global.nc.L1::no_allocate  LD 3: __ldcs + L2 prefetch of the next 4 KB (prefetch.global.L2)
//   CPW: output columns per warp (1 as gemv.cu, 2: twice the rows in flight per warp, half the blocks)
#include "common.cuh"
#define GV_WARPS 8
#define GV_U 8

template <int LD> __device__ __forceinline__ uint4 ldw(const uint4* p)
{
    uint4 v;
    if constexpr (LD == 1)
        asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    else if constexpr (LD == 2)
        asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    else
        v = __ldcs(p);
    return v;
}

__device__ __forceinline__ void dot16(float& acc, const uint4& w, const uint4& x)
{
    const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&w);
    const __nv_bfloat162* xp = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 a = __bfloat1622float2(wp[i]), b = __bfloat1622float2(xp[i]);
        acc = fmaf(a.x, b.x, acc);
        acc = fmaf(a.y, b.y, acc);
    }
}

// R rows, each with its own x row (xs[r]); one pass over K (K/8 chunks <= 32 * GV_U)
template <int R, int LD>
__device__ __forceinline__ void dot_rows1(const bf16* const (&w)[R], const bf16* const (&xs)[R], int K, int lane,
                                          float (&acc)[R])
{
    const int nch = K / 8;
    uint4 wc[R][GV_U];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int u = 0; u < GV_U; ++u) {
            const int c = u * 32 + lane;
            const uint4 v = ldw<LD>(reinterpret_cast<const uint4*>(w[r]) + (c < nch ? c : 0));
            wc[r][u] = c < nch ? v : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
    for (int u = 0; u < GV_U; ++u) {
        const int c = u * 32 + lane;
        if (c < nch) {
#pragma unroll
            for (int r = 0; r < R; ++r) dot16(acc[r], wc[r][u], reinterpret_cast<const uint4*>(xs[r])[c]);
        }
    }
}

template <int LD, int CPW>
__device__ void gateup(const bf16* h, const bf16* w13, bf16* act, const int* idx, int N, int K)
{
    const int lane = threadIdx.x & 31, n0 = (blockIdx.x * GV_WARPS + (threadIdx.x >> 5)) * CPW, p = blockIdx.y;
    if (n0 >= N) return;
    const bf16* We = w13 + (size_t)idx[p] * 2 * N * K;
    const bf16* w[2 * CPW];
    const bf16* xs[2 * CPW];
#pragma unroll
    for (int j = 0; j < CPW; ++j) {
        w[2 * j] = We + (size_t)(n0 + j) * K;
        w[2 * j + 1] = We + (size_t)(N + n0 + j) * K;
        xs[2 * j] = xs[2 * j + 1] = h;
    }
    float acc[2 * CPW] = {};
    dot_rows1<2 * CPW, LD>(w, xs, K, lane, acc);
#pragma unroll
    for (int j = 0; j < CPW; ++j) {
        const float g = warp_sum(acc[2 * j]), u = warp_sum(acc[2 * j + 1]);
        if (lane == 0) act[(size_t)p * N + n0 + j] = from_f<bf16>(rnd<bf16>(rnd<bf16>(silu_f(rnd<bf16>(g))) * rnd<bf16>(u)));
    }
}

template <int LD, int CPW>
__device__ void down(const bf16* act, const bf16* w2, bf16* ys, const int* idx, const float* wts, int N, int K)
{
    const int lane = threadIdx.x & 31, n0 = (blockIdx.x * GV_WARPS + (threadIdx.x >> 5)) * CPW, p = blockIdx.y;
    if (n0 >= N) return;
    const bf16* w[CPW];
    const bf16* xs[CPW];
#pragma unroll
    for (int j = 0; j < CPW; ++j) {
        w[j] = w2 + ((size_t)idx[p] * N + n0 + j) * K;
        xs[j] = act + (size_t)p * K;
    }
    float acc[CPW] = {};
    dot_rows1<CPW, LD>(w, xs, K, lane, acc);
#pragma unroll
    for (int j = 0; j < CPW; ++j) {
        const float s = warp_sum(acc[j]);
        if (lane == 0) ys[(size_t)p * N + n0 + j] = from_f<bf16>(rnd<bf16>(s) * rnd<bf16>(wts[p]));
    }
}

// down over all pairs in one block row: warp owns one output column n for every pair (R = P rows,
// each with its own act row): the block's 8 columns of all 4 experts (one launch row instead of 4)
template <int LD, int P>
__device__ void down_allp(const bf16* act, const bf16* w2, bf16* ys, const int* idx, const float* wts, int N, int K)
{
    const int lane = threadIdx.x & 31, n = blockIdx.x * GV_WARPS + (threadIdx.x >> 5);
    if (n >= N) return;
    const bf16* w[P];
    const bf16* xs[P];
#pragma unroll
    for (int p = 0; p < P; ++p) {
        w[p] = w2 + ((size_t)idx[p] * N + n) * K;
        xs[p] = act + (size_t)p * K;
    }
    float acc[P] = {};
    dot_rows1<P, LD>(w, xs, K, lane, acc);
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const float s = warp_sum(acc[p]);
        if (lane == 0) ys[(size_t)p * N + n] = from_f<bf16>(rnd<bf16>(s) * rnd<bf16>(wts[p]));
    }
}

#define V(LD, CPW)                                                                                                \
    extern "C" __global__ void __launch_bounds__(256) gateup_l##LD##_c##CPW(const bf16* h, const bf16* w13,     \
                                                                           bf16* act, const int* idx, int N, int K) \
    { gateup<LD, CPW>(h, w13, act, idx, N, K); }                                                                  \
    extern "C" __global__ void __launch_bounds__(256) down_l##LD##_c##CPW(const bf16* act, const bf16* w2, bf16* ys, \
                                                                         const int* idx, const float* wts, int N, int K) \
    { down<LD, CPW>(act, w2, ys, idx, wts, N, K); }
V(0, 1) V(1, 1) V(2, 1) V(0, 2) V(1, 2)
extern "C" __global__ void __launch_bounds__(256) down_allp_l0(const bf16* act, const bf16* w2, bf16* ys,
                                                               const int* idx, const float* wts, int N, int K)
{ down_allp<0, 4>(act, w2, ys, idx, wts, N, K); }
extern "C" __global__ void __launch_bounds__(256) down_allp_l1(const bf16* act, const bf16* w2, bf16* ys,
                                                               const int* idx, const float* wts, int N, int K)
{ down_allp<1, 4>(act, w2, ys, idx, wts, N, K); }
# ===== gpu_moe_exp.py
"""Session 7 experiment: batch-1 bf16 MoE GEMV versions (gpu_moe_exp.cu) against gemv.cu's kernels.
Each version: 20 launches captured in a CUDA graph (plain launches, no PDL), replayed 7 times between
CUDA events; median us per launch and GB/s of expert weights; outputs compared with gemv.cu's."""
import sys, statistics
from pathlib import Path
import numpy as np
import torch
from harness.gpu import launch, load_module
from harness.gpu.context import get_context
from optimized.gemv import GemvKernels

gpu = get_context(0)
stream = gpu.cuda.Stream()
ts = torch.cuda.ExternalStream(stream.handle, device=torch.device("cuda", gpu.index))
G = GemvKernels(gpu, torch.bfloat16, stream)
m = load_module(Path("gpu_moe_exp.cu"), gpu, include_dirs=(str(Path("optimized").resolve()),))
E, I, H, P = 32, 1792, 2048, 4
torch.manual_seed(0)
w13 = (torch.randn(E, 2 * I, H, device="cuda") * 0.02).bfloat16()
w2 = (torch.randn(E, H, I, device="cuda") * 0.02).bfloat16()
h = torch.randn(1, H, device="cuda").bfloat16()
idx = torch.tensor([3, 17, 9, 28], dtype=torch.int32, device="cuda")
wts = torch.rand(P, device="cuda")
act_ref = torch.empty(P, I, dtype=torch.bfloat16, device="cuda"); ys_ref = torch.empty(P, H, dtype=torch.bfloat16, device="cuda")
act = torch.empty_like(act_ref); ys = torch.empty_like(ys_ref)
GU_BYTES, DN_BYTES = P * 2 * I * H * 2, P * H * I * 2
p = lambda t: np.uintp(t.data_ptr())
i32 = np.int32

def graph_us(fn, reps=20):
    with torch.cuda.stream(ts):
        fn(); torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=ts):
            for _ in range(reps):
                fn()
        g.replay(); torch.cuda.synchronize()
        out = []
        for _ in range(7):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(ts); g.replay(); b.record(ts); b.synchronize(); out.append(a.elapsed_time(b) * 1e3 / reps)
    return statistics.median(out)

rows = []
def report(name, us, nbytes, same):
    rows.append((name, us, nbytes / us / 1e3, same))
    print(f"{name:22s} {us:8.2f} us  {nbytes / us / 1e3:7.0f} GB/s  same={same}", flush=True)

report("gemv.cu gateup", graph_us(lambda: G.moe_gateup(h, w13, act_ref, idx, P)), GU_BYTES, True)
report("gemv.cu down", graph_us(lambda: G.moe_down(act_ref, w2, ys_ref, idx, wts)), DN_BYTES, True)
for name, cpw in (("l0_c1", 1), ("l1_c1", 1), ("l2_c1", 1), ("l0_c2", 2), ("l1_c2", 2)):
    kg, kd = m.kernel(f"gateup_{name}"), m.kernel(f"down_{name}")
    gu = lambda: launch(kg, ((I + 8 * cpw - 1) // (8 * cpw), P), (256,), (p(h), p(w13), p(act), p(idx), i32(I), i32(H)), stream=stream)
    dn = lambda: launch(kd, ((H + 8 * cpw - 1) // (8 * cpw), P), (256,), (p(act_ref), p(w2), p(ys), p(idx), p(wts), i32(H), i32(I)), stream=stream)
    act.fill_(0); ys.fill_(0)
    u1 = graph_us(gu); u2 = graph_us(dn)
    report(f"gateup {name}", u1, GU_BYTES, bool(torch.equal(act, act_ref)))
    report(f"down {name}", u2, DN_BYTES, bool(torch.equal(ys, ys_ref)))
for name in ("down_allp_l0", "down_allp_l1"):
    k = m.kernel(name)
    ys.fill_(0)
    u = graph_us(lambda: launch(k, ((H + 7) // 8, 1), (256,), (p(act_ref), p(w2), p(ys), p(idx), p(wts), i32(H), i32(I)), stream=stream))
    report(name, u, DN_BYTES, bool(torch.equal(ys, ys_ref)))
# pairs: gate/up then down back to back (the decode order), current vs best-looking
report("pair gemv.cu", graph_us(lambda: (G.moe_gateup(h, w13, act_ref, idx, P), G.moe_down(act_ref, w2, ys_ref, idx, wts))), GU_BYTES + DN_BYTES, True)
# ===== gpu_call4.sh (calls 4 and 5)
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
python -m pytest -q -x tests/gpu/test_optimized_gemv.py -m gpu 2>&1 | tail -15 > $OUT/gemv-tests.log
tail -3 $OUT/gemv-tests.log
python gpu_ab7.py $OUT/ab.json 2>&1 | tee $OUT/ab.log | grep -E "^--|decode B"
# ===== gpu_ab7.py
"""Session 7 A/B on one machine: batch-1 and batch-2 decode with the fused MoE GEMV on and off
(GemvKernels.fuse_moe), alternating, GPU alone and streamed (python -m optimized's time_decode)."""
import sys, json
import torch
from harness.config import get_preset
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint
from optimized.__main__ import time_decode

cfg = get_preset("lfm2-8b-a1b")
eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), 0, dtype="bf16", progress=False)
out = {}
for B in (1, 2):
    for mode in (False, True, False, True):
        eng.G.fuse_moe = mode
        eng._dec = None
        torch.cuda.empty_cache()
        print(f"-- B={B} fuse_moe={mode}", flush=True)
        out.setdefault(f"B{B}_fused_{mode}", []).append(time_decode(eng, cfg, B, 50))
json.dump(out, open(sys.argv[1], "w"), indent=1)
# ===== gpu_call6.sh (calls 6 and 7; call 6 on call6-router-bulk-l2-prefetch.patch, call 7 on call7-gateup-l2-prefetch.patch, both reverted)
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
python -m pytest -q tests/gpu/test_optimized_gemv.py -m gpu 2>&1 | tail -15 > $OUT/gemv-tests.log
tail -3 $OUT/gemv-tests.log
python gpu_ab7b.py $OUT/ab.json 2>&1 | tee $OUT/ab.log | grep -E "^--|decode B|Error|error"
# ===== gpu_ab7b.py
"""Session 7 A/B on one machine: batch-1 and batch-2 decode with the router's L2 prefetch of the next
layer's first weights on and off (GemvKernels.l2_prefetch), alternating (python -m optimized's time_decode)."""
import sys, json
import torch
from harness.config import get_preset
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint
from optimized.__main__ import time_decode

cfg = get_preset("lfm2-8b-a1b")
eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), 0, dtype="bf16", progress=False)
out = {}
for B in (1, 2):
    for mode in (False, True, False, True):
        eng.G.l2_prefetch = mode
        eng._dec = None
        torch.cuda.empty_cache()
        print(f"-- B={B} l2_prefetch={mode}", flush=True)
        out.setdefault(f"B{B}_prefetch_{mode}", []).append(time_decode(eng, cfg, B, 50))
json.dump(out, open(sys.argv[1], "w"), indent=1)
# ===== gpu_call8.sh
#!/bin/bash
# Session 7, GPU call 8 (679c9c9): the optimized GPU tests (FAST fp32 MoE variants, 3xTF32 option),
# then issue 10's fp32 64 x 16 beside hf in one compare run.
source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
t0=$(date +%s)
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1 &
MM=$!
timeout 250 python -m pytest tests/gpu/test_optimized_kernels.py tests/gpu/test_optimized_split_tf32.py tests/gpu/test_optimized_engine.py tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py -q -p no:cacheprovider -rfE > $OUT/gpu-tests.log 2>&1
echo "tests rc=$? $(( $(date +%s)-t0 )) s"; tail -1 $OUT/gpu-tests.log
wait $MM; echo "make-model rc=$? $(( $(date +%s)-t0 )) s"
timeout $(( 585 - ($(date +%s)-t0) )) $H compare --phases none --engines optimized,hf --dtype fp32 --seq-len 16 --samples 64 \
  --batch 64 --warmup 3 --budget-s 20 --out r --run-id h100-opt-hf-fp32-64x16-s7 --no-progress > $OUT/compare-fp32.log 2>&1
echo "compare rc=$? $(( $(date +%s)-t0 )) s"
(cd r && tar czf $OUT/runs.tgz .)
for f in r/*/summary.csv; do python -c "
import pandas as pd
d = pd.read_csv('$f'); print(d.T.to_string())" | grep -E "engine|samples_per_s|tokens_per_s|valid|max_abs|top1|latency_p50|git_commit"; done
# ===== gpu_call9.sh
#!/bin/bash
# Session 7, GPU call 9 (679c9c9): fp32 accuracy over 256 prompts of 16 tokens against the float32 reference
# with the FAST MoE variants, 3xTF32 dense GEMMs off (default) and on, and the 64x16 forward time of each.
source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_GIT_COMMIT=$(cat .commit)
for x3 in false true; do
  timeout 280 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes 64x16 --accuracy 256x16 \
    --option tf32x3=$x3 --json $OUT/fp32-acc256-x3-$x3.json > $OUT/fp32-acc256-x3-$x3.log 2>&1
  echo "tf32x3=$x3 rc=$?"; grep -E "accuracy|64x16" $OUT/fp32-acc256-x3-$x3.log
done
