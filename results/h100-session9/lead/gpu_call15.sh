source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
timeout 150 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_kernels.py -k "test_moe_grouped_gemms and wg and bf16" -rfE > $OUT/tests.log 2>&1
tail -3 $OUT/tests.log
for i in 1 2; do
(cd ../.snapB && python moe_probe.py 4096 wg256 2>&1 | sed 's/wg256 /wg256-exp /' | tee -a $OUT/probe.log)
python moe_probe.py 4096 wg256 2>&1 | sed 's/wg256 /wg256-tanh/' | tee -a $OUT/probe.log
done
timeout 120 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 8x512 --iters 20 --accuracy 4x128 > $OUT/fwd.log 2>&1
grep -E "tok/s|err|top" $OUT/fwd.log | head
(cd ../.snapB && timeout 120 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 8x512 --iters 20 --accuracy 4x128 > $OUT/fwd-exp.log 2>&1; grep -E "tok/s|err|top" $OUT/fwd-exp.log | head)
