source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1 &
(cd ../.snapB && timeout 120 python -m pytest -q -p no:cacheprovider tests/bench -m gpu --benchmark-only -k "moe_grouped and bf16 and 4096 and wg256 and not wg256c and not wg256j and not wg256k" --benchmark-json $OUT/bench-probe.json --benchmark-columns=min,median,max > $OUT/bench-probe.log 2>&1)
grep -E "test_bench|passed|failed|Error" $OUT/bench-probe.log | tail -8
timeout 150 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 8x16,16x16,8x64 --iters 20 --moe-variants auto,mma64,wg256 > $OUT/fwd-small.log 2>&1
grep -E "tok/s" $OUT/fwd-small.log
wait
tail -2 $OUT/make-model.log
timeout 170 $H compare --phases none --engines optimized,hf --seq-len 512 --samples 32 \
  --batch 8 --warmup 3 --budget-s 30 --out r --run-id h100-opt-hf-8x512-s9 --no-progress > $OUT/compare-8x512.log 2>&1
tail -12 $OUT/compare-8x512.log
timeout 150 $H compare --phases none --engines optimized,hf --seq-len 16 --samples 256 \
  --batch 64 --warmup 3 --budget-s 30 --out r --run-id h100-opt-hf-64x16-s9 --no-progress > $OUT/compare-64x16.log 2>&1
tail -12 $OUT/compare-64x16.log
cd r && tar czf $OUT/results.tgz h100-opt-hf-8x512-s9 h100-opt-hf-64x16-s9
