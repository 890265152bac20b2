# Session 10 call 4 (norm_route_cluster on, its test fixed): GEMV / decode GPU tests, then the MoE GEMV occupancy probe
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
cp results/h100-session10/lead/gemv_probe2.cu results/h100-session10/lead/probe_occupancy.py .
python probe_occupancy.py $OUT/occupancy.json > $OUT/occupancy.log 2>&1; tail -7 $OUT/occupancy.log
python -m pytest -q -m gpu tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py > $OUT/tests.log 2>&1; tail -3 $OUT/tests.log
