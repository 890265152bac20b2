# Session 10 call 10 (5824899 + the router folded through out_proj): A/B in one process, then GPU tests
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
cp results/h100-session10/lead/ab_fold.py .
python ab_fold.py $OUT/ab_fold.json > $OUT/ab_fold.log 2>&1; tail -12 $OUT/ab_fold.log
python -m pytest -q -m gpu tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py tests/gpu/test_optimized_engine.py > $OUT/tests.log 2>&1; tail -4 $OUT/tests.log
