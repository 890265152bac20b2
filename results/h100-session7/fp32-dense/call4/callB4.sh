#!/bin/bash
# helper s7 (fp32 dense 3xTF32), device call 4 (final code: tf32x3 off by default, 8 chunks):
# GPU tests, float32-vs-float64 reference diagnosis of the 256x16 invalid sample, the brief's on/off runs
cd "$(dirname "$0")"
echo "== pytest split"; timeout 100 python -m pytest -q -s -m gpu tests/gpu/test_optimized_split_tf32.py > $OUT/pytest.log 2>&1; echo "rc=$?"
grep -E "passed|failed|3xTF32|tf32x3=|Error|^E " $OUT/pytest.log | tail -20
echo "== diag"; timeout 150 python diag_ref64.py > $OUT/diag.log 2>&1; echo "rc=$?"; cat $OUT/diag.log
for opt in true false; do
  echo "== engine tf32x3=$opt"
  timeout 50 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes 64x16,16x128,8x512 \
    --accuracy 8x16 --iters 5 --profile 64x16 --option tf32x3=$opt --json $OUT/eng_$opt.json > $OUT/eng_$opt.log 2>&1
  echo "rc=$?"; grep -E "loaded|accuracy|x16 |x128 |x512 |failed|Error" $OUT/eng_$opt.log
  sed -n '/profile 64x16/,$p' $OUT/eng_$opt.log | head -8 | tail -7
done
