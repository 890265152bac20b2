# Session 10 call 15: forward timings of the session's first and last commits in turn on one machine
# (A = ae83d00 in .snapA, B = 4db1ebe in .snap): calls 13-14 saw 64x16 medians of 28-82 ms with minimums
# at the old ~12 ms; is it the code or the host?
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache
for r in 1 2; do
  for v in A B; do
    d=$([ $v = A ] && echo ../.snapA || echo ../.snap)
    (cd $d && LFM2_GIT_COMMIT=$(cat .commit) timeout 120 python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 64x16,8x512 --iters 20 > $OUT/fwd_${v}${r}.log 2>&1; grep -E "^ +[0-9]+x" $OUT/fwd_${v}${r}.log | sed "s/^/$v$r /")
  done
done
