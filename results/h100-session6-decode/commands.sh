# Session 6 (2026-11-24) GPU calls, one H100 80GB HBM3. Each ran from .snap = git archive of the commit named
# plus the untracked scripts below (/work/snap.sh: git archive HEAD + the listed files), with .devwheels carried; the command was `cd .snap && bash gpu_callN.sh`.
# call 1 on e1f3225 + the MoE one-wave grid (reverted, not committed); call 2 on e1f3225; call 3 on e1f3225 + norm_route_split (= 5e56481);
# call 5 on ee6b05f + the fused op_norm (call5-fused-op-norm.patch, reverted); call 6 on 8525b1b (final code).
# gpu_ab.py below is call 3's (norm_route_split on/off); call 1's toggled GemvKernels.moe_one_wave the same way and also timed the
# 4-expert MoE gate/up + down alone in a CUDA graph of 20 launches (call1-moe-one-wave-ab.log).
# ===== gpu_call1.sh
set -x
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
python -m pytest -q -x tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py -m gpu 2>&1 | tail -15 > $OUT/tests.log
tail -3 $OUT/tests.log
python gpu_ab.py $OUT/ab.json 2>&1 | tee $OUT/ab.log | grep -v "^ *$"
# ===== gpu_ab.py
"""Session 6 A/B on one machine: batch-1 decode with norm_route_split on and off."""
import sys, time, json, statistics
import torch
from harness.config import get_preset
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint
from optimized.__main__ import time_decode

cfg = get_preset("lfm2-8b-a1b")
eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), 0, dtype="bf16", progress=False)
G = eng.G
out = {}

def graph_us(fn, reps=20):
    s = eng.tstream
    with torch.cuda.stream(s):
        fn(); torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=s):
            for _ in range(reps):
                fn()
        g.replay(); torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        ts = []
        for _ in range(5):
            a.record(s); g.replay(); b.record(s); b.synchronize(); ts.append(a.elapsed_time(b) * 1e3 / reps)
    return min(ts)

for mode in (False, True, False, True):
    G.norm_route_split = mode
    eng._dec = None
    torch.cuda.empty_cache()
    print(f"-- decode norm_route_split={mode}", flush=True)
    row = time_decode(eng, cfg, 1, 50)
    out.setdefault(f"decode_{mode}", []).append(row)
json.dump(out, open(sys.argv[1], "w"), indent=1)
# ===== gpu_call2.sh
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
python gpu_leaveout.py $OUT/leaveout.json 2>&1 | tee $OUT/leaveout.log | grep -v "^ *$"
# ===== gpu_leaveout.py
"""Session 6: where the batch-1 decode step's GPU time goes, by leaving kernels out of the decode
graph (or launching them twice) and timing the graph alone. Outputs of the altered graphs are
wrong by construction; only their time is read."""
import sys, json
import torch
from harness.config import get_preset
from harness.jobfiles import synthetic_prompts
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint

cfg = get_preset("lfm2-8b-a1b")
eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), 0, dtype="bf16", progress=False)
K, G, DK = eng.K, eng.G, eng._decode_kernels()
op_norms = {L["op_norm"].data_ptr() for L in eng.W.layers}
orig = {"add_norm": K.add_norm, "norm_route": G.norm_route, "conv_in_step": G.conv_in_step, "gemv": G.gemv,
        "moe_gateup": G.moe_gateup, "moe_down": G.moe_down, "qk_norm_rope_step": DK.qk_norm_rope_step,
        "decode_attention": DK.decode_attention, "argmax_rows": DK.argmax_rows}
owner = {"add_norm": K, "norm_route": G, "conv_in_step": G, "gemv": G, "moe_gateup": G, "moe_down": G,
         "qk_norm_rope_step": DK, "decode_attention": DK, "argmax_rows": DK}

def op_norm_only(fn, times):
    def f(x, y, nadd, w, *a, **k):
        n = times if w.data_ptr() in op_norms else 1
        for _ in range(n):
            fn(x, y, nadd, w, *a, **k)
    return f

def repeat(fn, times):
    def f(*a, **k):
        for _ in range(times):
            fn(*a, **k)
    return f

def gpu_ms(change, reps=40):
    for k, fn in orig.items():
        setattr(owner[k], k, fn)
    eng._dec = None
    torch.cuda.empty_cache()
    logits = eng.prefill(synthetic_prompts(cfg.vocab_size, 1, 16, seed=12), max_new_tokens=8)
    D = eng._dec
    with torch.cuda.stream(eng.tstream):  # valid routing for variants that skip the router
        D.work.idx.copy_(torch.arange(D.work.idx.numel(), dtype=torch.int32) % cfg.num_experts)
        D.work.wts.fill_(0.25)
    eng.synchronize()
    for k, how in change.items():
        if isinstance(how, tuple):
            setattr(owner[k], k, op_norm_only(orig[k], how[1]))
        else:
            setattr(owner[k], k, repeat(orig[k], how))
    nxt = logits.argmax(1)
    for _ in range(3):  # eager + capture with the changed launches, then replays
        eng.decode_greedy(nxt)
    for k, fn in orig.items():
        setattr(owner[k], k, fn)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = 1e9
    with torch.cuda.stream(eng.tstream):
        for _ in range(3):
            s.record(eng.tstream)
            for _ in range(reps):
                D.graph.replay()
            e.record(eng.tstream)
            e.synchronize()
            best = min(best, s.elapsed_time(e) / reps)
    return best

variants = [("baseline", {}),
            ("op add_norm x0", {"add_norm": ("op", 0)}), ("op add_norm x2", {"add_norm": ("op", 2)}),
            ("norm_route x0", {"norm_route": 0}), ("norm_route x2", {"norm_route": 2}),
            ("conv_in_step x2", {"conv_in_step": 2}), ("gemv x2", {"gemv": 2}),
            ("moe_gateup x2", {"moe_gateup": 2}), ("moe_down x2", {"moe_down": 2}),
            ("moe_down x0", {"moe_down": 0}),
            ("qk_norm_rope_step x2", {"qk_norm_rope_step": 2}), ("decode_attention x2", {"decode_attention": 2}),
            ("argmax x2", {"argmax_rows": 2}), ("baseline", {})]
res = []
for name, change in variants:
    ms = gpu_ms(change)
    res.append({"variant": name, "gpu_ms": ms})
    print(f"{name:24s} {ms:.4f} ms  ({(ms - res[0]['gpu_ms']) * 1e3:+.1f} us)", flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
# ===== gpu_call3.sh
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
python -m pytest -q -x tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py tests/gpu/test_optimized_kernels.py tests/gpu/test_optimized_engine.py -m gpu 2>&1 | tail -30 > $OUT/tests.log
tail -5 $OUT/tests.log
python gpu_ab.py $OUT/ab.json 2>&1 | tee $OUT/ab.log | grep -v "^ *$"
# ===== gpu_call5.sh
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
python -m pytest -q tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py -m gpu 2>&1 | tail -40 > $OUT/tests.log
tail -6 $OUT/tests.log
python gpu_ab2.py $OUT/ab2.json 2>&1 | tee $OUT/ab2.log | grep -v "^ *$"
# ===== gpu_ab2.py
"""Session 6 A/B on one machine: batch-1 decode with the op_norm fused into the mixers' GEMVs
(fuse_norm) on and off: GPU alone (graph replays), per-step and streamed ms per token."""
import sys, json
import torch
from harness.config import get_preset
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import GPUSyntheticCheckpoint
from optimized.__main__ import time_decode

cfg = get_preset("lfm2-8b-a1b")
eng = OptimizedEngine(GPUSyntheticCheckpoint(cfg, seed=0), 0, dtype="bf16", progress=False)
out = {}
for mode in (False, True, False, True, False, True):
    eng.fuse_norm = mode
    eng._dec = None
    torch.cuda.empty_cache()
    print(f"-- decode fuse_norm={mode}", flush=True)
    out.setdefault(f"decode_{mode}", []).append(time_decode(eng, cfg, 1, 50))
json.dump(out, open(sys.argv[1], "w"), indent=1, default=str)
# ===== gpu_call6.sh
#!/bin/bash
# Session 6, GPU call 6: final code: the optimized and harness GPU tests, the decode and forward
# timings, then issue 12's generate comparison beside hf at batch 1 and 64 (streamed decode).
source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
t0=$(date +%s)
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1 &
MM=$!
timeout 200 python -m pytest tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py tests/gpu/test_optimized_engine.py tests/gpu/test_optimized_kernels.py "tests/gpu/test_harness_compare_gpu.py::test_tiny_compare_on_gpu" -q -p no:cacheprovider -rfE > $OUT/gpu-tests.log 2>&1
echo "tests rc=$? $(( $(date +%s)-t0 )) s"; tail -1 $OUT/gpu-tests.log
timeout 70 python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x16,64x16 --decode 1,2,4,64 --json $OUT/opt-bench.json > $OUT/opt-bench.log 2>&1
echo "bench rc=$? $(( $(date +%s)-t0 )) s"; grep -E "^ +[0-9]+x|decode B" $OUT/opt-bench.log
wait $MM; echo "make-model rc=$? $(( $(date +%s)-t0 )) s"
for B in 1 64; do
  timeout $(( 585 - ($(date +%s)-t0) )) $H compare --phases none --engines optimized,hf --workload generate --max-new-tokens 64 \
    --samples $B --batch $B --warmup 1 --budget-s 20 --out r --run-id h100-generate-b$B-s6 --no-progress > $OUT/compare-b$B.log 2>&1
  echo "compare b$B rc=$? $(( $(date +%s)-t0 )) s"
done
(cd r && tar czf $OUT/runs.tgz .)
for f in r/*/summary.csv; do python -c "
import pandas as pd
d = pd.read_csv('$f'); print(d[['engine','batch','decode_mode','itl_p50_ms','itl_p99_ms','decode_tokens_per_s','pct_of_decode_floor','greedy_first_divergence','git_commit']].to_string())"; done
# ===== gpu_call7.sh (on 7806247: norm_route and norm_route_split sharing load_row_f4 / fma_row_f4)
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
python -m pytest -q tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py -p no:cacheprovider -rfE 2>&1 | tail -15 > $OUT/gpu-tests.log
tail -3 $OUT/gpu-tests.log
# ===== gpu_call8.sh (on the add_rows8 / store_normed8 refactor, committed after it passed)
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
python -m pytest -q tests/gpu/test_optimized_kernels.py tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py tests/gpu/test_optimized_engine.py -p no:cacheprovider -rfE 2>&1 | tail -15 > $OUT/gpu-tests.log
tail -3 $OUT/gpu-tests.log
python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes "" --decode 1 2>&1 | grep "decode B"
