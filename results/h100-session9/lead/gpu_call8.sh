source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
timeout 120 python keep_outputs.py 2>&1 | tee $OUT/keep-outputs.log
timeout 240 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_decode.py tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_attention_mma.py tests/gpu/test_optimized_logits_download.py tests/gpu/test_optimized_split_tf32.py -rfE > $OUT/tests-rest.log 2>&1
tail -3 $OUT/tests-rest.log
