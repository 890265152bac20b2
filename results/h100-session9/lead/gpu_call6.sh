source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
for i in 1 2; do
python moe_probe.py 4096 wg256 2>&1 | tee -a $OUT/probe-a.log
(cd ../.snapB && python moe_probe.py 4096 wg256 2>&1 | sed 's/wg256 /wg256fs/' | tee -a $OUT/probe-b.log)
done
(cd ../.snapB && timeout 100 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_kernels.py -k "test_moe_grouped_gemms and wg256 and bf16 and not wg256c and not wg256j and not wg256k" -rfE > $OUT/tests-b.log 2>&1; tail -2 $OUT/tests-b.log)
timeout 200 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 8x512 --iters 10 --profile 8x512 > $OUT/profile-8x512.log 2>&1
tail -45 $OUT/profile-8x512.log
