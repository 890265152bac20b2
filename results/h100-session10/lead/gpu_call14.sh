# Session 10 call 14 (4db1ebe): the forward timings alone (call 13 ran them beside make-model's
# synthetic-weight generation and measured 64x16 at 82 ms, 8x512 at 32 ms)
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
timeout 280 python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x16,64x16,8x512 --iters 20 --json $OUT/opt-bench.json > $OUT/opt-bench.log 2>&1
grep -E "^ +[0-9]+x" $OUT/opt-bench.log
