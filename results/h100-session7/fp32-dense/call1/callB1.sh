#!/bin/bash
# helper s7 (fp32 dense 3xTF32), device call 1: GPU tests, GEMM microbenchmark, engine on/off
cd "$(dirname "$0")"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
echo "== pytest"; timeout 150 python -m pytest -q -s -m gpu tests/gpu/test_optimized_split_tf32.py > $OUT/pytest.log 2>&1; echo "pytest rc=$?"
grep -E "passed|failed|error|3xTF32|tf32x3=|Error|assert" $OUT/pytest.log | tail -30
echo "== bench"; timeout 110 python bench_x3.py $OUT/bench.json > $OUT/bench.log 2>&1; echo "bench rc=$?"
grep -A3 "accuracy" $OUT/bench.log | grep accuracy
for opt in true false; do
  echo "== engine tf32x3=$opt"
  timeout 90 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes 64x16,16x128,8x512 \
    --accuracy 8x16 --iters 5 --profile 64x16 --option tf32x3=$opt --json $OUT/eng_$opt.json > $OUT/eng_$opt.log 2>&1
  echo "rc=$?"; grep -E "loaded|accuracy|x16 |x128 |x512 |failed|Error" $OUT/eng_$opt.log; grep -E "^ *[0-9.]+ +[0-9.]+ " $OUT/eng_$opt.log | head -0
  sed -n '/profile 64x16/,$p' $OUT/eng_$opt.log | head -16
done
echo "== bench summary"; sed -n '/^summary/,$p' $OUT/bench.log
