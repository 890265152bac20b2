# Call 4 (helper s8/A, final code): the kept set (mma16fl, mma64fl, mma64tl, mma128tl, mma128r) and the
# fp32 policy (<= 64 mma16f, <= 256 mma64fl, else mma128tl); kernel + engine tests, microbench
# 16..4096 (1024 twice), max error, 64x16 forward per variant (twice each) with --accuracy 64x16 under
# the policy, accuracy with mma128r forced, small shapes with mma16f / mma16fl / mma64f.
export LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit) PYTHONPATH=$PWD:$PYTHONPATH
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu --format=csv,noheader
t0=$SECONDS
python -m pytest -q -rf --tb=line -p no:cacheprovider tests/gpu/test_optimized_kernels.py -m gpu \
  -k "(moe_grouped_gemms and (fl or tl or mma128r)) or moe_variant_table or moe_sort" > $OUT/tests.log 2>&1
echo "kernel tests: $(tail -1 $OUT/tests.log) ($((SECONDS-t0)) s)"; grep -E "^FAILED|Error" $OUT/tests.log | head -20
t0=$SECONDS
timeout 150 python -m pytest -q -rf --tb=line -p no:cacheprovider tests/gpu/test_optimized_engine.py -m gpu -k "fp32" > $OUT/engine_tests.log 2>&1
echo "engine fp32 tests rc $? ($((SECONDS-t0)) s): $(tail -1 $OUT/engine_tests.log)"; grep -E "^FAILED" $OUT/engine_tests.log | head
B=tests/bench/test_bench_optimized.py::test_bench_moe_grouped_gemms
t0=$SECONDS
ids=""
for t in 16 64; do for v in mma16f mma16fl mma64fl; do ids="$ids $B[fp32-$t-$v]"; done; done
for v in mma64f mma64fl mma64tl mma128tl; do ids="$ids $B[fp32-256-$v]"; done
for t in 1024 4096; do for v in mma128f mma128tl mma128r; do ids="$ids $B[fp32-$t-$v]"; done; done
python -m pytest -q -p no:cacheprovider -m gpu --benchmark-only $ids --benchmark-json $OUT/bench.json > $OUT/bench.log 2>&1
echo "bench: $(tail -1 $OUT/bench.log) ($((SECONDS-t0)) s)"
ids=""; for v in mma128r mma128tl mma128f; do ids="$ids $B[fp32-1024-$v]"; done
python -m pytest -q -p no:cacheprovider -m gpu --benchmark-only $ids --benchmark-json $OUT/bench2.json > $OUT/bench2.log 2>&1
PROBE_CHECK=1 python moe_probe.py 1024 mma128f mma128tl mma128r mma64fl mma16fl > $OUT/check.log 2>&1; grep -E "error|rror" $OUT/check.log
t0=$SECONDS
timeout 150 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes 64x16 --iters 15 --accuracy 64x16 \
  --moe-variants auto,mma128f,mma128r,mma128tl,mma128f,mma128r > $OUT/fwd.log 2>&1
echo "forward rc $? ($((SECONDS-t0)) s)"; grep -E " ms |accuracy|rror" $OUT/fwd.log | tail -8
t0=$SECONDS
timeout 120 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes 1x16,8x16 --iters 15 --accuracy 64x16 \
  --option moe_variant=mma128r --moe-variants auto,mma16f,mma16fl,mma64f > $OUT/fwd_small.log 2>&1
echo "forward small + mma128r accuracy rc $? ($((SECONDS-t0)) s)"; grep -E " ms |accuracy|rror" $OUT/fwd_small.log | tail -10
python bench_table.py $OUT/bench.json
echo "-- 1024 again, reverse order"; python bench_table.py $OUT/bench2.json
