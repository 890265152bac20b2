# Session 10 call 17 (dab8f33): the GEMV GPU tests after the test helpers were factored out (1 failed: test_norm_route_folded drew saturated logits, a near tie); call 18: the same with its logits of order 1 and fixed seeds
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
python -m pytest -q -m gpu tests/gpu/test_optimized_gemv.py -p no:cacheprovider > $OUT/tests.log 2>&1; tail -2 $OUT/tests.log
