# Call 3 (helper s8/A): LATE_REFILL (l, tl = with SPLIT_TRUNC) on mma128f's and mma64f's geometry, and
# 16 warps/SM made possible by the truncating split's registers: q (4x4 warps, BN 128, 1 block/SM),
# r (4x2 warps, BN 64, BKB 128, 2 blocks/SM). Tests, microbench (1024 twice, in two orders),
# max error, 64x16 forward (15 iters), ncu gate/up.
export LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit) PYTHONPATH=$PWD:$PYTHONPATH
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu --format=csv,noheader
t0=$SECONDS
python -m pytest -q -rf --tb=line -p no:cacheprovider tests/gpu/test_optimized_kernels.py -m gpu \
  -k "(moe_grouped_gemms and (mma128l or mma128tl or mma64fl or mma64tl or mma128q or mma128r)) or moe_variant_table" > $OUT/tests.log 2>&1
echo "tests: $(tail -1 $OUT/tests.log) ($((SECONDS-t0)) s)"; grep -E "^FAILED|Error" $OUT/tests.log | head -20
B=tests/bench/test_bench_optimized.py::test_bench_moe_grouped_gemms
t0=$SECONDS
ids=""
for t in 1024 4096; do for v in mma128f mma128t mma128tl mma128l mma128q mma128r; do ids="$ids $B[fp32-$t-$v]"; done; done
for v in mma64f mma64fl mma64tl mma128f mma128tl mma128q; do ids="$ids $B[fp32-256-$v]"; done
python -m pytest -q -p no:cacheprovider -m gpu --benchmark-only $ids --benchmark-json $OUT/bench.json > $OUT/bench.log 2>&1
echo "bench: $(tail -1 $OUT/bench.log) ($((SECONDS-t0)) s)"
ids=""
for v in mma128r mma128q mma128l mma128tl mma128t mma128f; do ids="$ids $B[fp32-1024-$v]"; done
python -m pytest -q -p no:cacheprovider -m gpu --benchmark-only $ids --benchmark-json $OUT/bench2.json > $OUT/bench2.log 2>&1
echo "bench 2: $(tail -1 $OUT/bench2.log)"
PROBE_CHECK=1 python moe_probe.py 1024 mma128f mma128l mma128tl mma128q mma128r mma64fl mma64tl > $OUT/check.log 2>&1; grep -E "error|rror" $OUT/check.log
t0=$SECONDS
timeout 150 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes 64x16 --iters 15 --moe-variants auto,mma128q,mma128tl,mma128t,mma128r,mma128f > $OUT/fwd.log 2>&1
echo "forward rc $? ($((SECONDS-t0)) s)"; grep -E " ms |rror" $OUT/fwd.log | tail -7
t0=$SECONDS
PROBE_REPS=1 timeout 80 ncu --target-processes all -k regex:"moe_gateup_mma128(f|tl|q|r)_f32" --launch-count 4 \
  --metrics "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,sm__warps_active.avg.pct_of_peak_sustained_active" \
  python moe_probe.py 1024 mma128f mma128tl mma128q mma128r > $OUT/ncu_metrics.log 2>&1
echo "ncu metrics rc $? ($((SECONDS-t0)) s)"
grep -E "moe_|hmma|issue_active|stalled|duration|warps_active" $OUT/ncu_metrics.log | grep -v PROF | sed -E 's/ +/ /g; s/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | cut -c1-110
python bench_table.py $OUT/bench.json
echo "-- 1024 again, reverse order"; python bench_table.py $OUT/bench2.json
