#!/bin/bash
# GPU call 7 (last of the session): where decode and 1x16 prefill time goes, then every GPU test.
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
timeout 150 python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x16 --decode 1,64 \
  --decode-profile 1 --decode-profile 64 --profile 1x16 --json $OUT/optimized-decode.json > $OUT/optimized.log 2>&1
echo "optimized rc=$?"; grep -v "^  " $OUT/optimized.log | tail -12
timeout 400 python -m pytest -q -p no:cacheprovider tests/gpu --durations=5 > $OUT/gpu-tests.log 2>&1
echo "tests rc=$?"; grep -E "passed|failed" $OUT/gpu-tests.log | tail -2; grep -E "^(FAILED|ERROR)" $OUT/gpu-tests.log | head
