#!/bin/bash
# Session 4, GPU call 9: phase 4's device-sized experts (issue 8) and the refactors under it
# (baseline GEMM tile and phase 2's silu_mul in headers, phase 2's sizing hooks): every non-optimized
# GPU test but the 3-minute full-model compare, then phases 3 and 4 side by side on the small preset.
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
t0=$(date +%s)
timeout 280 python -m pytest tests/gpu -q -p no:cacheprovider -rfE --ignore=tests/gpu/test_optimized_decode.py \
  --ignore=tests/gpu/test_optimized_engine.py --ignore=tests/gpu/test_optimized_kernels.py \
  --deselect tests/gpu/test_harness_compare_gpu.py::test_compare_phase0_full_model_report > $OUT/gpu-tests.log 2>&1
echo "gpu tests rc=$? $(( $(date +%s)-t0 )) s"
timeout $(( 385 - ($(date +%s)-t0) )) python -m harness compare --preset small --phases 3,4 --seq-len 16 --samples 8 --batch 4 \
  --warmup 1 --budget-s 5 --out r --run-id h100-p34-small-device-sized --no-progress > $OUT/compare.log 2>&1
echo "compare rc=$? $(( $(date +%s)-t0 )) s"
(cd r && tar czf $OUT/runs.tgz .)
tail -4 $OUT/gpu-tests.log
python -c "
import pandas as pd; d=pd.read_csv('r/h100-p34-small-device-sized/summary.csv'); print(d[['engine','samples_per_s','d2h_bytes_per_sample','h2d_bytes_per_sample','device_allocs_per_sample','valid','max_abs_err']].to_string())"
