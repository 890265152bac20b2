source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
timeout 150 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_kernels.py -k "test_moe_grouped_gemms and wg and bf16 or variant_table" -rfE > $OUT/tests.log 2>&1
tail -4 $OUT/tests.log
python moe_probe.py 4096 wg256,wg256p,wg256,wg256p 2>&1 | tee $OUT/probe4096.log
python moe_probe.py 8192 wg256,wg256p 2>&1 | tee $OUT/probe8192.log
python moe_probe.py 1024 wg256,wg256p 2>&1 | tee $OUT/probe1024.log
timeout 200 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 8x512,16x512,64x16 --iters 20 --moe-variants wg256,wg256p,wg256,wg256p > $OUT/fwd.log 2>&1
grep -E "tok/s" $OUT/fwd.log
