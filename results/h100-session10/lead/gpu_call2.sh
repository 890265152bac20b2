# Session 10 call 2 (route_in_moe: the MoE GEMVs route their own pairs): GPU tests, then the A/B
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
cp results/h100-session10/lead/ab_route.py .
python ab_route.py $OUT/ab_route.json > $OUT/ab_route.log 2>&1; tail -12 $OUT/ab_route.log
python -m pytest -q -m gpu tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py tests/gpu/test_optimized_engine.py "tests/gpu/test_optimized_kernels.py" -k "not wgmma and not moe_gemm" -x > $OUT/tests.log 2>&1; tail -4 $OUT/tests.log
