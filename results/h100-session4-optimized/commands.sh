#!/bin/bash
# Session 4, GPU call 1: every GPU test (last session's unrun changes), then the two predictions.
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/device.txt
t0=$(date +%s)
timeout 420 python -m pytest tests/gpu -q -p no:cacheprovider -rfE --durations=15 > $OUT/gpu-tests.log 2>&1
echo "gpu tests rc=$? in $(( $(date +%s)-t0 )) s"
timeout $(( 585 - ($(date +%s)-t0) )) python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x16,64x16 --decode 1,64 --decode-profile 1 > $OUT/opt-bench.log 2>&1
echo "bench rc=$?"
tail -5 $OUT/gpu-tests.log
grep -E "^ *[0-9]+x[0-9]+|decode|ms" $OUT/opt-bench.log | head -40
#!/bin/bash
# Session 4, GPU call 4: add_norm_vec8 (tests, engine accuracy, decode/1x16 timings), then issue 9's
# phase 0 at 128 tokens on 1 and 2 ranks.
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
t0=$(date +%s)
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1 &
MM=$!
timeout 150 python -m pytest tests/gpu/test_optimized_kernels.py tests/gpu/test_optimized_engine.py -q -p no:cacheprovider -rfE > $OUT/gpu-tests.log 2>&1
echo "optimized tests rc=$? $(( $(date +%s)-t0 )) s"
wait $MM; echo "make-model rc=$? $(( $(date +%s)-t0 )) s"
timeout 100 python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x16,64x16 --accuracy 8x16 --decode 1,64 --decode-profile 1 > $OUT/opt-bench.log 2>&1
echo "bench rc=$? $(( $(date +%s)-t0 )) s"
timeout 60 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes 64x16 --accuracy 8x16 > $OUT/opt-bench-fp32.log 2>&1
echo "bench fp32 rc=$? $(( $(date +%s)-t0 )) s"
timeout $(( 585 - ($(date +%s)-t0) )) $H compare --phases 0 --seq-len 128 --ranks 1,2 --samples 2 --batch 1 --warmup 0 --budget-s 1 \
  --timeout-s 400 --out r --run-id h100-p03-r12 --no-progress > $OUT/compare.log 2>&1
echo "compare rc=$? $(( $(date +%s)-t0 )) s"
(cd r && tar czf $OUT/runs.tgz .)
tail -3 $OUT/gpu-tests.log
grep -E "x16 |decode B|add_norm|max abs|top-1|VALID" $OUT/opt-bench.log $OUT/opt-bench-fp32.log | head -20
cut -d, -f1-12 r/*/summary.csv
#!/bin/bash
# Session 4, GPU call 5: the graph-capture fix's test, then issue 9's phases 1-3 at 128 tokens on 1 and 2 ranks.
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
t0=$(date +%s)
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1 &
MM=$!
timeout 120 python -m pytest tests/gpu/test_optimized_engine.py -q -p no:cacheprovider -rfE > $OUT/gpu-tests.log 2>&1
echo "optimized engine tests rc=$? $(( $(date +%s)-t0 )) s"
wait $MM; echo "make-model rc=$? $(( $(date +%s)-t0 )) s"
timeout $(( 585 - ($(date +%s)-t0) )) $H compare --phases 1-3 --seq-len 128 --ranks 1,2 --samples 2 --batch 1 --warmup 0 --budget-s 1 \
  --timeout-s 400 --out r --run-id h100-p03-r12 --no-progress > $OUT/compare.log 2>&1
echo "compare rc=$? $(( $(date +%s)-t0 )) s"
(cd r && tar czf $OUT/runs.tgz .)
tail -3 $OUT/gpu-tests.log
cut -d, -f1-12 r/*/summary.csv
#!/bin/bash
# Session 4, GPU call 8: the decode and kernel GPU tests on the final optimized code, and where 1x16 and decode time goes now.
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
t0=$(date +%s)
timeout 420 python -m pytest tests/gpu/test_optimized_decode.py tests/gpu/test_optimized_kernels.py -q -p no:cacheprovider -rfE > $OUT/gpu-tests.log 2>&1
echo "optimized decode+kernel tests rc=$? $(( $(date +%s)-t0 )) s"
timeout $(( 580 - ($(date +%s)-t0) )) python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x16 --profile 1x16 --decode-profile 1 --decode-profile 64 > $OUT/opt-profile.log 2>&1
echo "profile rc=$? $(( $(date +%s)-t0 )) s"
tail -3 $OUT/gpu-tests.log
grep -A12 "^profile" $OUT/opt-profile.log | head -45
