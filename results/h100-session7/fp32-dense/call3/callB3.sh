#!/bin/bash
# helper s7 (fp32 dense 3xTF32), device call 3: the big product in K chunks (default 8):
# GPU tests, chunk-count bench, engine accuracy on 256x16 per chunk count, the brief's on/off runs
cd "$(dirname "$0")"
echo "== pytest split"; timeout 100 python -m pytest -q -s -m gpu tests/gpu/test_optimized_split_tf32.py > $OUT/pytest.log 2>&1; echo "rc=$?"
grep -E "passed|failed|3xTF32|tf32x3=|Error|^E " $OUT/pytest.log | tail -20
echo "== pytest engine fp32"; timeout 100 python -m pytest -q -m gpu tests/gpu/test_optimized_engine.py -k fp32 > $OUT/pytest_engine.log 2>&1; echo "rc=$?"
tail -1 $OUT/pytest_engine.log
echo "== bench"; timeout 90 python bench_chunks.py /tmp/bench_chunks.json > $OUT/bench_chunks.log 2>&1; echo "rc=$?"
cat $OUT/bench_chunks.log
for c in 2 4 8 16; do
  echo "== chunks=$c: 64x16 timing + accuracy 256x16"
  echo "== chunks=$c" >> $OUT/acc256.log
  timeout 45 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes 64x16 --iters 5 --accuracy 256x16 \
    --option tf32x3_chunks=$c >> $OUT/acc256.log 2>&1; echo "rc=$?"
  sed -n '/== chunks='$c'$/,$p' $OUT/acc256.log | grep -E "accuracy|x16 |Error"
done
for opt in true false; do
  echo "== engine tf32x3=$opt (default chunks)"
  timeout 50 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes 64x16,16x128,8x512 \
    --accuracy 8x16 --iters 5 --profile 64x16 --option tf32x3=$opt --json $OUT/eng_$opt.json > $OUT/eng_$opt.log 2>&1
  echo "rc=$?"; grep -E "loaded|accuracy|x16 |x128 |x512 |failed|Error" $OUT/eng_$opt.log
  sed -n '/profile 64x16/,$p' $OUT/eng_$opt.log | head -11 | tail -10
done
