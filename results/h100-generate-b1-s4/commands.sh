#!/bin/bash
# Session 4, GPU call 7: generation at batch 1 and 64 beside hf (bf16) after add_norm_vec8 (issue 12).
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
t0=$(date +%s)
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1
C="$H compare --phases none --engines optimized,hf --workload generate --max-new-tokens 64 --out r --no-progress --warmup 1 --budget-s 20"
timeout $(( 580 - ($(date +%s)-t0) )) bash -c "$C --samples 1 --batch 1 --run-id h100-generate-b1-s4; $C --samples 64 --batch 64 --run-id h100-generate-b64-s4" > $OUT/generate.log 2>&1
echo "generate rc=$? $(( $(date +%s)-t0 )) s"
(cd r && tar czf $OUT/runs.tgz .)
python - <<'PY'
import json,glob
for f in sorted(glob.glob('r/*/records/*.json')):
    r=json.load(open(f)); print(f.split('/')[1], r['engine'], r['dtype'], 'ttft %.2f'%(r['ttft_ms'] or -1), 'itl50 %.3f'%(r['itl_p50_ms'] or -1), 'dec tok/s %.0f'%(r['decode_tokens_per_s'] or 0), 'GB/s %.0f'%(r['decode_gbps'] or 0), '%%floor %.1f'%(r['pct_of_decode_floor'] or 0), 'greedy', r['greedy_steps_checked'], r['greedy_first_divergence'], r['valid'], (r.get('error') or '')[:300])
PY
