source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1
timeout 170 $H compare --phases none --engines optimized,hf --seq-len 512 --samples 128 \
  --batch 8 --warmup 3 --budget-s 30 --out r --run-id h100-opt-hf-8x512-s9e --no-progress > $OUT/compare-8x512.log 2>&1
grep -E "optimized-|hf-" $OUT/compare-8x512.log
timeout 170 $H compare --phases none --engines optimized,hf --seq-len 512 --samples 128 \
  --batch 16 --warmup 2 --budget-s 30 --out r --run-id h100-opt-hf-16x512-s9e --no-progress > $OUT/compare-16x512.log 2>&1
grep -E "optimized-|hf-" $OUT/compare-16x512.log
cd r && tar czf $OUT/results.tgz h100-opt-hf-*
