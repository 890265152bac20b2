#!/bin/bash
# GPU call 5: the optimized engine's decode path (issue 12): its GPU tests, then generation beside hf.
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
($H make-model --preset lfm2-8b-a1b > $OUT/make-model.log 2>&1 &)
timeout 240 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_decode.py tests/gpu/test_optimized_engine.py tests/test_optimized_decode_cpu.py > $OUT/tests.log 2>&1
echo "tests rc=$?"; grep -E "passed|failed|error" $OUT/tests.log | tail -3; grep -E "^(FAILED|ERROR)" $OUT/tests.log | head -20
while pgrep -f "make-model" > /dev/null; do sleep 2; done
C="$H compare --phases none --engines optimized,hf --workload generate --max-new-tokens 64 --out r --no-progress --warmup 1 --budget-s 60"
timeout 280 bash -c "$C --samples 1 --batch 1 --run-id h100-generate-b1; $C --samples 64 --batch 64 --run-id h100-generate-b64" > $OUT/generate.log 2>&1
echo "generate rc=$?"
(cd r && tar czf $OUT/runs.tgz .)
python - <<'PY'
import json,glob
for f in sorted(glob.glob('r/*/records/*.json')):
    r=json.load(open(f)); print(f.split('/')[1], r['engine'], r['dtype'], 'ttft %.2f'%(r['ttft_ms'] or -1), 'itl50 %.3f'%(r['itl_p50_ms'] or -1), 'dec tok/s %.0f'%(r['decode_tokens_per_s'] or 0), 'GB/s %.0f'%(r['decode_gbps'] or 0), '%%floor %.1f'%(r['pct_of_decode_floor'] or 0), 'greedy', r['greedy_steps_checked'], r['greedy_first_divergence'], (r.get('error') or '')[:300])
PY
