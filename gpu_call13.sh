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
