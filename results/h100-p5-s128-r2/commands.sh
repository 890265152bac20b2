#!/bin/bash
# Session 4, GPU call 6: issue 9's phases 0-3 at 16 tokens on 1 and 2 ranks, and phase 5 at 128
# tokens on 2 ranks (session 3's record of it did not come back).
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
t0=$(date +%s)
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1
echo "make-model rc=$? $(( $(date +%s)-t0 )) s"
timeout 330 $H compare --phases 0-3 --seq-len 16 --ranks 1,2 --samples 2 --batch 1 --warmup 0 --budget-s 1 \
  --timeout-s 300 --out r --run-id h100-p03-r12 --no-progress > $OUT/compare-s16.log 2>&1
echo "compare s16 rc=$? $(( $(date +%s)-t0 )) s"
timeout $(( 585 - ($(date +%s)-t0) )) $H compare --phases 5 --seq-len 128 --ranks 2 --samples 1024 --warmup 1 --budget-s 30 \
  --timeout-s 300 --out r --run-id h100-p5-s128-r2 --no-progress > $OUT/compare-p5.log 2>&1
echo "compare p5 rc=$? $(( $(date +%s)-t0 )) s"
(cd r && tar czf $OUT/runs.tgz .)
cut -d, -f1-12 r/*/summary.csv
