source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1
timeout 200 $H compare --phases none --engines optimized,hf --dtype fp32 --seq-len 16 --samples 256 \
  --batch 64 --warmup 3 --budget-s 30 --out r --run-id h100-opt-hf-fp32-64x16-s9 --no-progress > $OUT/compare-fp32.log 2>&1
grep -E "optimized-|hf-" $OUT/compare-fp32.log
timeout 150 $H compare --phases none --engines optimized,hf --seq-len 512 --samples 64 \
  --batch 16 --warmup 2 --budget-s 30 --out r --run-id h100-opt-hf-16x512-s9c --no-progress > $OUT/compare-16x512.log 2>&1
grep -E "optimized-|hf-" $OUT/compare-16x512.log
cd r && tar czf $OUT/results.tgz h100-opt-hf-*
