# Session 10 call 16: A = ae83d00 (.snapA) vs B = 4db1ebe (.snap) at 64x16: 40 timed forwards each and the
# eager kernel profile, to see whether call 15's +1 ms (minimums) is on the GPU or on the host
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache
for v in A B A B; do
  d=$([ $v = A ] && echo ../.snapA || echo ../.snap)
  (cd $d && LFM2_GIT_COMMIT=$(cat .commit) timeout 100 python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 64x16 --iters 40 --profile 64x16 > $OUT/prof_$v.log 2>&1; grep -E "^ +[0-9]+x|profile 64x16" $OUT/prof_$v.log | sed "s/^/$v /"; grep -A12 "profile 64x16" $OUT/prof_$v.log | tail -11 | sed "s/^/$v /")
done
