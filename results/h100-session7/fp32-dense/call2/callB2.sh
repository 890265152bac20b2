#!/bin/bash
# helper s7 (fp32 dense 3xTF32), device call 2: the one-GEMM form (K-concatenated [ah|al|ah]):
# GPU tests, fp32 engine regression tests, production GEMM bench, engine on/off timings + accuracy
cd "$(dirname "$0")"
echo "== pytest split"; timeout 100 python -m pytest -q -s -m gpu tests/gpu/test_optimized_split_tf32.py > $OUT/pytest.log 2>&1; echo "rc=$?"
grep -E "passed|failed|3xTF32|tf32x3=|Error|^E " $OUT/pytest.log | tail -20
echo "== pytest engine fp32"; timeout 150 python -m pytest -q -m gpu tests/gpu/test_optimized_engine.py -k fp32 > $OUT/pytest_engine.log 2>&1; echo "rc=$?"
tail -3 $OUT/pytest_engine.log
echo "== bench"; timeout 60 python bench_x3_final.py $OUT/bench_final.json > $OUT/bench_final.log 2>&1; echo "rc=$?"
for opt in true false; do
  echo "== engine tf32x3=$opt"
  timeout 60 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes 64x16,16x128,8x512 \
    --accuracy 8x16 --iters 5 --profile 64x16 --option tf32x3=$opt --json $OUT/eng_$opt.json > $OUT/eng_$opt.log 2>&1
  echo "rc=$?"; grep -E "loaded|accuracy|x16 |x128 |x512 |failed|Error" $OUT/eng_$opt.log
  sed -n '/profile 64x16/,$p' $OUT/eng_$opt.log | head -11 | tail -10
done
for opt in true false; do
  echo "== accuracy 256x16 tf32x3=$opt"
  timeout 60 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes "" --accuracy 256x16 \
    --option tf32x3=$opt --json $OUT/acc256_$opt.json > $OUT/acc256_$opt.log 2>&1; echo "rc=$?"
  grep -E "accuracy|Error" $OUT/acc256_$opt.log
done
echo "== bench"; cat $OUT/bench_final.log
