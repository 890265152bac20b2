# ===== gpu_call1.sh
#!/bin/bash
# Session 5, GPU call 1: the GEMV kernels' tests, the decode tests (now on the GEMV path at batch 1),
# the route refactor's tests; then batch-1 decode and 1x16 with and without the GEMV kernels.
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/device.txt
timeout 300 python -m pytest tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py "tests/gpu/test_optimized_kernels.py::test_route_and_sort" -q -p no:cacheprovider -rfE -x > $OUT/gpu-tests.log 2>&1
echo "tests rc=$? $(( $(date +%s)-t0 )) s"
P="python -m optimized --preset lfm2-8b-a1b --weights gpu"
timeout 120 $P --shapes 1x16,1x4 --decode 1,4,64 --decode-profile 1 --json $OUT/gemv.json > $OUT/bench-gemv.log 2>&1
echo "bench gemv rc=$? $(( $(date +%s)-t0 )) s"
timeout 100 $P --shapes 1x16,1x4 --decode 1,4 --no-gemv --json $OUT/nogemv.json > $OUT/bench-nogemv.log 2>&1
echo "bench no-gemv rc=$? $(( $(date +%s)-t0 )) s"
tail -3 $OUT/gpu-tests.log
grep -E "^ +1x|decode B" $OUT/bench-gemv.log $OUT/bench-nogemv.log
grep -A16 "^profile decode" $OUT/bench-gemv.log
# ===== gpu_call2.sh
#!/bin/bash
# Session 5, GPU call 2: PDL launches. GEMV + PDL tests, decode tests, optimized engine tests;
# then decode at batch 1/4/64 with PDL, and batch 1 without.
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
t0=$(date +%s)
P="python -m optimized --preset lfm2-8b-a1b --weights gpu"
timeout 100 $P --shapes 1x16,1x4 --decode 1,4,64 --json $OUT/pdl.json > $OUT/bench-pdl.log 2>&1
echo "bench pdl rc=$? $(( $(date +%s)-t0 )) s"
timeout 80 $P --shapes 1x4 --decode 1 --no-pdl --json $OUT/nopdl.json > $OUT/bench-nopdl.log 2>&1
echo "bench no-pdl rc=$? $(( $(date +%s)-t0 )) s"
grep -E "^ +1x|decode B|Error|error" $OUT/bench-pdl.log $OUT/bench-nopdl.log | head -20
timeout 330 python -m pytest tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py tests/gpu/test_optimized_engine.py -q -p no:cacheprovider -rfE -x > $OUT/gpu-tests.log 2>&1
echo "tests rc=$? $(( $(date +%s)-t0 )) s"
tail -15 $OUT/gpu-tests.log
# ===== gpu_call3.sh
#!/bin/bash
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
t0=$(date +%s)
timeout 200 python gpu_diag.py > $OUT/diag.log 2>&1; echo "diag rc=$? $(( $(date +%s)-t0 )) s"
cat $OUT/diag.log | grep -v Warn | tail -20
timeout 300 python -m pytest tests/gpu/test_optimized_gemv.py -q -p no:cacheprovider -rfE -k "engine or pdl" > $OUT/gpu-tests.log 2>&1
echo "tests rc=$? $(( $(date +%s)-t0 )) s"; grep -E "^E  .*(output|Assert)|passed|failed" $OUT/gpu-tests.log | head
# ===== gpu_call4.sh
#!/bin/bash
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
t0=$(date +%s)
timeout 120 python gpu_diag.py > $OUT/diag.log 2>&1; echo "diag rc=$? $(( $(date +%s)-t0 )) s"
grep -v Warn $OUT/diag.log | tail -16
timeout 300 python -m pytest tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py -q -p no:cacheprovider -rfE > $OUT/gpu-tests.log 2>&1
echo "tests rc=$? $(( $(date +%s)-t0 )) s"; grep -E "^E  .*(output|Assert)|passed|failed" $OUT/gpu-tests.log | head
P="python -m optimized --preset lfm2-8b-a1b --weights gpu"
timeout 100 $P --shapes 1x16,1x4 --decode 1,4,64 --json $OUT/pdl.json > $OUT/bench-pdl.log 2>&1
echo "bench pdl rc=$? $(( $(date +%s)-t0 )) s"
grep -E "^ +1x|decode B|Error|error" $OUT/bench-pdl.log | head -20
# ===== gpu_call5.sh
#!/bin/bash
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
t0=$(date +%s)
P="python -m optimized --preset lfm2-8b-a1b --weights gpu"
timeout 100 $P --shapes 1x16,1x4 --decode 1,2,4,64 --json $OUT/pdl.json > $OUT/bench-pdl.log 2>&1
echo "bench pdl rc=$? $(( $(date +%s)-t0 )) s"
timeout 90 $P --shapes 1x4 --decode 1,2,4 --no-gemv > $OUT/bench-nogemv.log 2>&1
echo "bench nogemv rc=$? $(( $(date +%s)-t0 )) s"
timeout 90 $P --shapes 1x4 --decode 1,2 --no-pdl > $OUT/bench-nopdl.log 2>&1
echo "bench nopdl rc=$? $(( $(date +%s)-t0 )) s"
grep -E "^ +1x|decode B|Error|error" $OUT/bench-*.log | head -30
timeout 120 python gpu_diag.py > $OUT/diag.log 2>&1; echo "diag rc=$? $(( $(date +%s)-t0 )) s"
grep -v Warn $OUT/diag.log | tail -16
# ===== gpu_call6.sh
#!/bin/bash
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
t0=$(date +%s)
P="python -m optimized --preset lfm2-8b-a1b --weights gpu"
timeout 100 $P --shapes 1x16,1x4 --decode 1,2,4,64 --json $OUT/pdl.json > $OUT/bench-pdl.log 2>&1
echo "bench rc=$? $(( $(date +%s)-t0 )) s"
grep -E "^ +1x|decode B|Error|error" $OUT/bench-*.log | head -30
timeout 120 python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x1 --no-pdl --decode-profile 1 > $OUT/profile-nopdl.log 2>&1
echo "profile rc=$? $(( $(date +%s)-t0 )) s"
grep -A16 "^profile decode" $OUT/profile-nopdl.log
timeout 300 python -m pytest tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py -q -p no:cacheprovider -rfE > $OUT/gpu-tests.log 2>&1
echo "tests rc=$? $(( $(date +%s)-t0 )) s"; grep -E "^E  .*(output|Assert)|passed|failed" $OUT/gpu-tests.log | head
# ===== gpu_call7.sh
#!/bin/bash
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)-conv-lb2
t0=$(date +%s)
timeout 100 python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x1 --decode 1,2 > $OUT/bench-lb2.log 2>&1
echo "bench rc=$? $(( $(date +%s)-t0 )) s"
grep -E "decode B|Error|error" $OUT/bench-lb2.log
# ===== gpu_call8.sh
#!/bin/bash
# Session 5, GPU call 8: issue 12's generate comparison beside hf after the GEMV kernels and PDL
# (batch 1 and 64), and the optimized engine's forward shapes for regressions.
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/device.txt
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1 &
MM=$!
timeout 120 python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x16,64x16,8x512 --decode 1,64 --json $OUT/opt-bench.json > $OUT/opt-bench.log 2>&1
echo "bench rc=$? $(( $(date +%s)-t0 )) s"
wait $MM; echo "make-model rc=$? $(( $(date +%s)-t0 )) s"
for B in 1 64; do
  timeout $(( 570 - ($(date +%s)-t0) )) $H compare --phases none --engines optimized,hf --workload generate --max-new-tokens 64 \
    --samples $B --batch $B --warmup 1 --budget-s 20 --out r --run-id h100-generate-b$B-s5 --no-progress > $OUT/compare-b$B.log 2>&1
  echo "compare b$B rc=$? $(( $(date +%s)-t0 )) s"
done
(cd r && tar czf $OUT/runs.tgz .)
grep -E "^ +[0-9]+x|decode B" $OUT/opt-bench.log
for f in r/*/summary.csv; do cut -d, -f1-14 $f; done
# ===== gpu_call9.sh
#!/bin/bash
# Session 5, GPU call 9: every optimized-engine GPU test on the final code, plus phase 2 kernels and
# phase 4 engine (harness.gpu.compile changed: modules keep their cubin for PDL launches).
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
t0=$(date +%s)
timeout 520 python -m pytest tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py tests/gpu/test_optimized_engine.py tests/gpu/test_optimized_kernels.py tests/gpu/test_phase2_kernels.py tests/gpu/test_phase4_engine.py -q -p no:cacheprovider -rfE > $OUT/gpu-tests.log 2>&1
echo "tests rc=$? $(( $(date +%s)-t0 )) s"
tail -4 $OUT/gpu-tests.log
# ===== call 10 (inline)
timeout 420 python -m pytest tests/gpu -q -p no:cacheprovider -rfE --deselect tests/gpu/test_harness_compare_gpu.py::test_compare_phase0_full_model_report --ignore=<the six files of call 9>
# ===== gpu_diag.py
"""Diagnostic: 1x3 forward of the small model, fp32/bf16, gemv x pdl x graphs, vs the fp64 reference."""
import itertools
import numpy as np
import torch
from harness.jobfiles import synthetic_prompts
from harness.reference_engine import ReferenceEngine
from optimized.engine import OptimizedEngine
from optimized.gpu_synthetic import checkpoint_for

ck = checkpoint_for("small", seed=3)
V = ck.config.vocab_size
shapes = [(1, 3), (4, 1), (1, 1), (2, 9)]
ref = ReferenceEngine(ck, device=0, dtype="fp64")
want = {s: ref.forward(synthetic_prompts(V, *s, seed=sum(s))) for s in shapes}
ref.close()
for dtype in ("fp32", "bf16"):
    for gemv, pdl, graphs in itertools.product((True, False), repeat=3):
        eng = OptimizedEngine(ck, 0, dtype=dtype, gemv=gemv, pdl=pdl, graphs=graphs, progress=False, max_len=64)
        errs = []
        for s in shapes:
            got = eng.forward(synthetic_prompts(V, *s, seed=sum(s)))
            errs.append(float(np.abs(got - want[s]).max()))
        eng.close()
        print(f"{dtype} gemv={gemv:d} pdl={pdl:d} graphs={graphs:d}: " + "  ".join(f"{s[0]}x{s[1]} {e:.2e}" for s, e in zip(shapes, errs)), flush=True)

# ===== gpu_call13.sh
#!/bin/bash
# Session 5, GPU call 13: is the bimodal batch-1 step time (1.65 vs 1.82 ms per process) on the GPU or the host?
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
t0=$(date +%s)
B="python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x1 --iters 2 --decode 1,64"
for r in 1 2 3 4; do
  timeout 60 $B > $OUT/head-$r.log 2>&1; echo "run $r $(( $(date +%s)-t0 )) s"; grep "decode B" $OUT/head-$r.log
done
nvidia-smi -q -d CLOCK,PERFORMANCE | head -60 > $OUT/clocks.txt
# ===== gpu_call15.sh
#!/bin/bash
# Session 5, GPU call 15: in-graph copies and split argmax, without the L2 prefetch: tests, then
# decode timings (wall and GPU alone), 3 processes.
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
t0=$(date +%s)
B="python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x1 --iters 2 --decode 1,2,64"
for r in 1 2 3; do
  timeout 70 $B > $OUT/bench-$r.log 2>&1; echo "run $r rc=$? $(( $(date +%s)-t0 )) s"; grep -E "decode B|rror|fail" $OUT/bench-$r.log
done
timeout 300 python -m pytest tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py -q -p no:cacheprovider -rfE > $OUT/gpu-tests.log 2>&1
echo "tests rc=$? $(( $(date +%s)-t0 )) s"; grep -E "^E  .*(output|Assert|rror)|passed|failed" $OUT/gpu-tests.log | head
# ===== gpu_call16.sh
#!/bin/bash
# Session 5, GPU call 16: A/B on one machine: ids copies inside the decode graph (HEAD) or outside (ab_prev).
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
t0=$(date +%s)
rm -rf /tmp/prev && cp -r . /tmp/prev && rm -rf /tmp/prev/optimized && cp -r ab_prev/optimized /tmp/prev/optimized
B="python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x1 --iters 2 --decode 1,2"
for r in 1 2; do
  timeout 60 $B > $OUT/in-graph-$r.log 2>&1; echo "in-graph $r:"; grep -E "decode" $OUT/in-graph-$r.log
  (cd /tmp/prev && timeout 60 $B > $OUT/outside-$r.log 2>&1); echo "outside $r:"; grep -E "decode" $OUT/outside-$r.log
done
# ===== gpu_call17.sh
#!/bin/bash
# Session 5, GPU call 17: final code: the optimized GPU tests, then issue 12's generate comparison
# beside hf at batch 1 and 64, and the decode timings with GPU time alone.
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
t0=$(date +%s)
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1 &
MM=$!
timeout 200 python -m pytest tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py tests/gpu/test_optimized_engine.py tests/gpu/test_optimized_kernels.py -q -p no:cacheprovider -rfE > $OUT/gpu-tests.log 2>&1
echo "tests rc=$? $(( $(date +%s)-t0 )) s"; tail -1 $OUT/gpu-tests.log
timeout 60 python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x16,64x16 --decode 1,2,4,64 --json $OUT/opt-bench.json > $OUT/opt-bench.log 2>&1
echo "bench rc=$? $(( $(date +%s)-t0 )) s"; grep -E "^ +[0-9]+x|decode B" $OUT/opt-bench.log
wait $MM; echo "make-model rc=$? $(( $(date +%s)-t0 )) s"
for B in 1 64; do
  timeout $(( 580 - ($(date +%s)-t0) )) $H compare --phases none --engines optimized,hf --workload generate --max-new-tokens 64 \
    --samples $B --batch $B --warmup 1 --budget-s 20 --out r --run-id h100-generate-b$B-s5b --no-progress > $OUT/compare-b$B.log 2>&1
  echo "compare b$B rc=$? $(( $(date +%s)-t0 )) s"
done
(cd r && tar czf $OUT/runs.tgz .)
for f in r/*/summary.csv; do python -c "
import pandas as pd, sys
d = pd.read_csv('$f'); print(d[['engine','batch','itl_p50_ms','itl_p99_ms','decode_tokens_per_s','pct_of_decode_floor','greedy_first_divergence','git_commit']].to_string())"; done
# ===== call 11: as gpu_call17.sh's tests and bench (norm_route's first run); call 12: A/B of HEAD vs HEAD~1's optimized/ (as gpu_call16.sh)
# ===== call 18 (inline)
timeout 400 python -m pytest "tests/gpu/test_harness_compare_gpu.py::test_compare_phase0_full_model_report" -q
# (call 14 ran gpu_call15.sh as it stood on ac8cbfa, with the L2 prefetch; call 15 the same on 2833d8a without it)
# ===== gpu_call20.sh
#!/bin/bash
# Session 5, GPU call 20: the lean per-token host path (HEAD) vs the torch copies (HEAD~1's optimized/, ab_prev),
# 3 processes each, alternating; the decode GPU tests on HEAD; the GEMV microbenchmarks.
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
t0=$(date +%s)
rm -rf /tmp/prev && cp -r . /tmp/prev && rm -rf /tmp/prev/optimized && cp -r ab_prev/optimized /tmp/prev/optimized
B="python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x1 --iters 2 --decode 1,64"
for r in 1 2 3; do
  timeout 60 $B > $OUT/lean-$r.log 2>&1; echo "lean $r: $(grep 'decode B' $OUT/lean-$r.log | cut -c1-60 | tr '\n' '|')"
  (cd /tmp/prev && timeout 60 $B > $OUT/torch-$r.log 2>&1); echo "torch $r: $(grep 'decode B' $OUT/torch-$r.log | cut -c1-60 | tr '\n' '|')"
done
echo "$(( $(date +%s)-t0 )) s"
timeout 150 python -m pytest tests/gpu/test_optimized_decode.py tests/gpu/test_optimized_gemv.py -q -p no:cacheprovider -rfE > $OUT/gpu-tests.log 2>&1
echo "tests rc=$? $(( $(date +%s)-t0 )) s"; tail -1 $OUT/gpu-tests.log
timeout 120 python -m pytest tests/bench -m gpu --benchmark-only -k "gemv" -q -p no:cacheprovider --benchmark-json=$OUT/bench-gemv.json > $OUT/bench-gemv.log 2>&1
echo "bench rc=$? $(( $(date +%s)-t0 )) s"
python -c "
import json; d = json.load(open('$OUT/bench-gemv.json'))
for b in d['benchmarks']: print(b['name'], '%.1f GB/s events, %.3f ms' % (b['extra_info']['event_GBps'], b['extra_info']['event_ms']))"
# ===== gpu_call21.sh
#!/bin/bash
# Session 5, GPU call 21: the GEMV microbenchmarks (CUDA graph of 20 launches each).
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
t0=$(date +%s)
timeout 200 python -m pytest tests/bench -m gpu --benchmark-only -k "gemv" -q -p no:cacheprovider --benchmark-json=$OUT/bench-gemv.json > $OUT/bench-gemv.log 2>&1
echo "bench rc=$? $(( $(date +%s)-t0 )) s"; tail -3 $OUT/bench-gemv.log
python -c "
import json; d = json.load(open('$OUT/bench-gemv.json'))
for b in d['benchmarks']: print(b['name'], '%.0f GB/s, %.1f us per launch' % (b['extra_info']['graph_GBps'], b['extra_info']['us_per_launch']))"
