#!/bin/bash
# GPU call 3: routing near-tie diagnosis of the INVALID phase-5 runs, the missing phase5-s128-r2
# variant, and phase 4's copy/compute timeline.
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
M=$($H make-model --preset lfm2-8b-a1b 2>$OUT/make-model.log | awk '/^path:/{print $2}')
echo "model $M"
for S in 16 128; do
  $H make-data --model $M --samples 1024 --seq-len $S --out jobs/s$S > $OUT/data-s$S.log 2>&1
  $H run --engine phase5 --model $M --data jobs/s$S/inputs.bin --answers jobs/s$S/answers.bin \
     --outputs jobs/s$S/phase5.bin --warmup 1 --budget-s 120 --out runs --run-id diag > $OUT/run-s$S.log 2>&1
  $H explain --model $M --data jobs/s$S/inputs.bin --answers jobs/s$S/answers.bin \
     --outputs jobs/s$S/phase5.bin --max-samples 24 > $OUT/explain-s$S.txt 2>&1
  echo "explain s$S rc=$?"; tail -4 $OUT/explain-s$S.txt
done
mkdir -p r
$H compare --phases 5 --seq-len 128 --ranks 2 --samples 1024 --warmup 1 --budget-s 30 --run-id p5-s128-r2 --out r --no-progress > $OUT/p5r2.log 2>&1
echo "p5 s128 r2 rc=$?"
$H compare --phases 4 --seq-len 16 --samples 32 --batch 8 --warmup 1 --option timeline=true --run-id h100-phase4-timeline --out r --no-progress > $OUT/timeline.log 2>&1
echo "timeline rc=$?"
(cd r && tar czf $OUT/runs.tgz .)
python - <<'PY'
import json,glob
for f in sorted(glob.glob('r/*/records/*.json')):
    r=json.load(open(f)); print(f.split('/')[-1], 'sps=%.3g'%(r['samples_per_s'] or 0), 'valid', r['valid'], 'err', r['max_abs_err'], 'invalid', r.get('invalid_samples'), r.get('error'))
PY
