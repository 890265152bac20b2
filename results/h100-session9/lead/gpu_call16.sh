source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1 &
timeout 200 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_kernels.py tests/gpu/test_optimized_engine.py -rfE > $OUT/tests.log 2>&1
tail -2 $OUT/tests.log
wait
timeout 130 $H compare --phases none --engines optimized,hf --seq-len 512 --samples 32 \
  --batch 8 --warmup 3 --budget-s 30 --out r --run-id h100-opt-hf-8x512-s9d --no-progress > $OUT/compare-8x512.log 2>&1
grep -E "optimized-|hf-" $OUT/compare-8x512.log
timeout 130 $H compare --phases none --engines optimized,hf --seq-len 16 --samples 1024 \
  --batch 64 --warmup 3 --budget-s 30 --out r --run-id h100-opt-hf-64x16-s9d --no-progress > $OUT/compare-64x16.log 2>&1
grep -E "optimized-|hf-" $OUT/compare-64x16.log
cd r && tar czf $OUT/results.tgz h100-opt-hf-*
