# Session 10 call 19 (review: norm_route_cluster removed, store_rows8 and _warp_per_token shared): GEMV and decode GPU tests
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
python -m pytest -q -m gpu tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py -p no:cacheprovider > $OUT/tests.log 2>&1; tail -2 $OUT/tests.log
