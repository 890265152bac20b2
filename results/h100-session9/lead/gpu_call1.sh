source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
nvidia-smi -L
timeout 200 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_kernels.py -k "test_moe_grouped_gemms and wg or variant_table" -rfE > $OUT/tests.log 2>&1
tail -15 $OUT/tests.log
timeout 150 python -m pytest -q -p no:cacheprovider tests/bench -m gpu --benchmark-only -k "moe_grouped and bf16 and (1024 or 4096) and (wg or mma256wl or mma128xl)" --benchmark-json $OUT/bench.json --benchmark-columns=min,median,max > $OUT/bench.log 2>&1
grep -E "test_bench|passed|failed|Error" $OUT/bench.log | tail -20
timeout 220 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 8x512,16x512,16x128 --iters 10 --moe-variants auto,wg128,wg128d,wg256 > $OUT/fwd.log 2>&1
tail -25 $OUT/fwd.log
