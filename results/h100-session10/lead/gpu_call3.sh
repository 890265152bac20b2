# Session 10 call 3 (norm_route_cluster): the A/B, then the GEMV / decode / engine GPU tests
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
cp results/h100-session10/lead/ab_cluster.py .
python ab_cluster.py $OUT/ab_cluster.json > $OUT/ab_cluster.log 2>&1; tail -12 $OUT/ab_cluster.log
python -m pytest -q -m gpu tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py -x > $OUT/tests.log 2>&1; tail -3 $OUT/tests.log
