# Session 10 call 12: A = 335d42e (.snap), B = + qk_norm_rope_step folded into the decode attention (.snapB);
# decode figures of each in turn (two processes each), then B's GPU tests
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
S=results/h100-session10/lead
for r in 1 2; do
  for v in A B; do
    d=$([ $v = A ] && echo ../.snap || echo ../.snapB)
    (cd $d && LFM2_GIT_COMMIT=$(cat .commit) PYTHONPATH=$PWD:$PYTHONPATH python $OLDPWD/$S/decode_gpu_ms.py $OUT/decode_${v}${r}.json $v$r 2>&1 | tail -1)
  done
done
[ -n "$AB_ONLY" ] && exit 0
cd ../.snapB && export LFM2_GIT_COMMIT=$(cat .commit)
python -m pytest -q -m gpu tests/gpu/test_optimized_decode.py tests/gpu/test_optimized_engine.py tests/gpu/test_optimized_gemv.py > $OUT/tests.log 2>&1; tail -3 $OUT/tests.log
