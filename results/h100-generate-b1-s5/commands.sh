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
