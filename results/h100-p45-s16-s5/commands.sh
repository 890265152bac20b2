#!/bin/bash
# Session 5, GPU call 19: phases 4 and 5 on the full model after phase 4's device-sized experts
# (session 4's plan item 1): 16 tokens, 1 and 2 ranks, as session 3's h100-p45.
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/device.txt
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1
echo "make-model rc=$? $(( $(date +%s)-t0 )) s"
timeout $(( 570 - ($(date +%s)-t0) )) $H compare --phases 4,5 --seq-len 16 --ranks 1,2 --samples 1024 --warmup 1 --budget-s 30 \
  --out r --run-id h100-p45-s16-s5 --no-progress > $OUT/compare.log 2>&1
echo "compare rc=$? $(( $(date +%s)-t0 )) s"
(cd r && tar czf $OUT/runs.tgz .)
python -c "
import pandas as pd
d = pd.read_csv('r/h100-p45-s16-s5/summary.csv')
print(d[['engine','seq_len','ranks','samples','samples_per_s','h2d_bytes_per_sample','d2h_bytes_per_sample','gpu_mem_peak_gb','valid','max_abs_err']].to_string())"
