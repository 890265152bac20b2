#!/bin/bash
# Session 5, GPU call 1: the GEMV kernels' tests, the decode tests (now on the GEMV path at batch 1),
# the route refactor's tests; then batch-1 decode and 1x16 with and without the GEMV kernels.
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/device.txt
timeout 300 python -m pytest tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py "tests/gpu/test_optimized_kernels.py::test_route_and_sort" -q -p no:cacheprovider -rfE -x > $OUT/gpu-tests.log 2>&1
echo "tests rc=$? $(( $(date +%s)-t0 )) s"
P="python -m optimized --preset lfm2-8b-a1b --weights gpu"
timeout 120 $P --shapes 1x16,1x4 --decode 1,4,64 --decode-profile 1 --json $OUT/gemv.json > $OUT/bench-gemv.log 2>&1
echo "bench gemv rc=$? $(( $(date +%s)-t0 )) s"
timeout 100 $P --shapes 1x16,1x4 --decode 1,4 --no-gemv --json $OUT/nogemv.json > $OUT/bench-nogemv.log 2>&1
echo "bench no-gemv rc=$? $(( $(date +%s)-t0 )) s"
tail -3 $OUT/gpu-tests.log
grep -E "^ +1x|decode B" $OUT/bench-gemv.log $OUT/bench-nogemv.log
grep -A16 "^profile decode" $OUT/bench-gemv.log
