# Call 2 (helper s8/A): FAST options on mma128f's geometry: t = SPLIT_TRUNC (hi = x, lo = x - trunc(x)),
# o = HI_FIRST (hi*hi first in the MMA triple), to = both; at / st = call 1's a / s with SPLIT_TRUNC.
# Kernel tests, microbench 256/1024/4096, max error at the real shape, 64x16 forward, ncu gate/up.
export LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit) PYTHONPATH=$PWD:$PYTHONPATH
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu --format=csv,noheader
NEW="mma128t mma128o mma128to mma128at mma128st"
t0=$SECONDS
python -m pytest -q -rf --tb=line -p no:cacheprovider tests/gpu/test_optimized_kernels.py -m gpu \
  -k "(moe_grouped_gemms and (mma128t or mma128o or mma128to or mma128at or mma128st)) or moe_variant_table" > $OUT/tests.log 2>&1
echo "tests: $(tail -1 $OUT/tests.log) ($((SECONDS-t0)) s)"; grep -E "^FAILED|Error" $OUT/tests.log | head -20
t0=$SECONDS
ids=""
for t in 256 1024 4096; do for v in mma128f $NEW mma128a; do ids="$ids tests/bench/test_bench_optimized.py::test_bench_moe_grouped_gemms[fp32-$t-$v]"; done; done
python -m pytest -q -p no:cacheprovider -m gpu --benchmark-only $ids --benchmark-json $OUT/bench.json > $OUT/bench.log 2>&1
echo "bench: $(tail -1 $OUT/bench.log) ($((SECONDS-t0)) s)"
PROBE_CHECK=1 python moe_probe.py 1024 mma128f $NEW > $OUT/check.log 2>&1; grep -E "error|rror" $OUT/check.log
t0=$SECONDS
timeout 150 python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes 64x16 --iters 7 --moe-variants auto,mma128t,mma128o,mma128to,mma128at,mma128f > $OUT/fwd.log 2>&1
echo "forward rc $? ($((SECONDS-t0)) s)"; grep -E " ms |rror" $OUT/fwd.log | tail -7
t0=$SECONDS
PROBE_REPS=1 timeout 80 ncu --target-processes all -k regex:"moe_gateup_mma128(f|t|to)_f32" --launch-count 3 \
  --metrics "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio" \
  python moe_probe.py 1024 mma128f mma128t mma128to > $OUT/ncu_metrics.log 2>&1
echo "ncu metrics rc $? ($((SECONDS-t0)) s)"
grep -E "moe_|hmma|issue_active|stalled|duration" $OUT/ncu_metrics.log | grep -v PROF | sed -E 's/ +/ /g; s/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | cut -c1-110
python bench_table.py $OUT/bench.json
