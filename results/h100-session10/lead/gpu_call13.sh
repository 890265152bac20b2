#!/bin/bash
# Session 10, GPU call 13: final code (4db1ebe): the harness compare GPU test, the decode and forward
# timings, then issue 12's generate comparison beside hf at batch 1 and 64 (streamed decode).
source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
t0=$(date +%s)
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1 &
MM=$!
timeout 100 python -m pytest "tests/gpu/test_harness_compare_gpu.py::test_tiny_compare_on_gpu" -q -p no:cacheprovider -rfE > $OUT/gpu-tests.log 2>&1
echo "tests rc=$? $(( $(date +%s)-t0 )) s"; tail -1 $OUT/gpu-tests.log
timeout 120 python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x16,64x16,8x512 --decode 1,2,64 --json $OUT/opt-bench.json > $OUT/opt-bench.log 2>&1
echo "bench rc=$? $(( $(date +%s)-t0 )) s"; grep -E "^ +[0-9]+x|decode B" $OUT/opt-bench.log
wait $MM; echo "make-model rc=$? $(( $(date +%s)-t0 )) s"
for B in 1 64; do
  timeout $(( 585 - ($(date +%s)-t0) )) $H compare --phases none --engines optimized,hf --workload generate --max-new-tokens 64 \
    --samples $B --batch $B --warmup 1 --budget-s 20 --out r --run-id h100-generate-b$B-s10 --no-progress > $OUT/compare-b$B.log 2>&1
  echo "compare b$B rc=$? $(( $(date +%s)-t0 )) s"
done
(cd r && tar czf $OUT/runs.tgz .)
for f in r/*/summary.csv; do python -c "
import pandas as pd
d = pd.read_csv('$f'); print(d[['engine','batch','decode_mode','itl_p50_ms','itl_p99_ms','decode_tokens_per_s','pct_of_decode_floor','greedy_first_divergence','git_commit']].to_string())"; done
