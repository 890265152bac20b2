source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
timeout 150 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_kernels.py -k "test_moe_grouped_gemms and wg256 and bf16 or variant_table" -rfE > $OUT/tests.log 2>&1
tail -4 $OUT/tests.log
timeout 120 python -m pytest -q -p no:cacheprovider tests/bench -m gpu --benchmark-only -k "moe_grouped and bf16 and (1024 or 4096) and wg256" --benchmark-json $OUT/bench.json --benchmark-columns=min,median,max > $OUT/bench.log 2>&1
grep -E "test_bench|passed|failed|Error" $OUT/bench.log | tail -12
timeout 200 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 8x512,16x512 --iters 10 --moe-variants wg256,wg256c,wg256k,wg256j > $OUT/fwd.log 2>&1
grep -E "tok/s" $OUT/fwd.log
timeout 150 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 64x16,8x64,16x128 --iters 20 --moe-variants auto,mma64,mma128xl,wg256,wg128 > $OUT/fwd-small.log 2>&1
grep -E "tok/s" $OUT/fwd-small.log
timeout 200 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_engine.py -rfE > $OUT/tests-engine.log 2>&1
tail -4 $OUT/tests-engine.log
