# Session 8 (2026-11-24), the lead's GPU calls on one NVIDIA H100 80GB HBM3 (driver 580.159.04), each run
# as `cd .snap && bash gpu_callN.sh` with carry [".devwheels", ".snap"] (.snap = `git archive` of the commit
# named, plus the working-tree files listed). Logs: lead/callN/. The helpers' calls: fp32-moe/call1-4.sh
# (fp32-moe-notes.md). The Python scripts named here are in lead/.
# ===== gpu_call1.sh / gpu_call2.sh (4097837's files before commit): A/B of the logits download
#   call 1: python ab_download.py fp32; pytest tests/gpu/test_optimized_logits_download.py tests/gpu/test_optimized_engine.py
#           tests/gpu/test_optimized_decode.py -x (185 passed); python ab_download.py bf16 (ab_download.py had a bug in
#           its NoPrefault variant: no timings)
#   call 2: python ab_download.py fp32; python ab_download.py bf16
# ===== gpu_call3.sh (4097837)
source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1 &
timeout 250 python -m pytest tests/gpu/test_optimized_logits_download.py tests/gpu/test_optimized_engine.py -q -p no:cacheprovider -rfE > $OUT/gpu-tests.log 2>&1
wait
$H compare --phases none --engines optimized,hf --dtype fp32 --seq-len 16 --samples 256 \
  --batch 64 --warmup 3 --budget-s 30 --out r --run-id h100-opt-hf-fp32-64x16-s8 --no-progress > $OUT/compare-fp32.log 2>&1
python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 1x16,64x16,8x512 --iters 20 > $OUT/bf16-shapes.log 2>&1
# ===== gpu_call4.sh (4097837)
python d2h_bench.py > $OUT/d2h-bench.log 2>&1
python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes 64x16 --iters 10 --profile 64x16 > $OUT/fp32-profile.log 2>&1
# ===== gpu_call5.sh (4097837)
python tail_probe.py fp32 > $OUT/tail-fp32.log 2>&1
python tail_probe.py bf16 > $OUT/tail-bf16.log 2>&1
# ===== gpu_call6.sh (4097837)
python ab_copy.py fp32 > $OUT/ab-copy-fp32.log 2>&1
python ab_copy.py bf16 > $OUT/ab-copy-bf16.log 2>&1
# ===== gpu_call7.sh (.snapB = 4097837 + bf16 STREAM_VARIANTs mma128w (8,2,4,128,256,3), mma128x (8,2,4,128,128,4),
# mma256w (16,4,4,128,128,3) in moe_stream.cu and kernels.py)
timeout 150 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_kernels.py -k "test_moe_grouped_gemms and (mma128w or mma128x or mma256w) or variant_table" > $OUT/tests.log 2>&1
timeout 200 python -m pytest -q -p no:cacheprovider tests/bench -m gpu --benchmark-only -k "moe_grouped and bf16 and (1024 or 4096) and mma1 or moe_grouped and bf16 and (1024 or 4096) and mma256 or moe_grouped and bf16 and (1024 or 4096) and wmma" --benchmark-json $OUT/bench.json > $OUT/bench.log 2>&1
python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 8x512,16x512,64x16 --iters 10 --moe-variants auto,mma128,mma128w,mma128x,mma256w > $OUT/fwd.log 2>&1
# ===== gpu_call8.sh (4097837 + the working tree's moe_stream.cu and kernels.py: the helper's fp32 variants and the
# bf16 candidates mma128x, mma128xl, mma256w, mma256wl, mma256x)
timeout 200 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_kernels.py -k "moe or variant" > $OUT/tests-kernels.log 2>&1
python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 64x16,16x128,8x512,16x512 --iters 10 --moe-variants auto,mma128,wmma128,mma128x,mma128xl,mma256w,mma256wl,mma256x > $OUT/fwd-bf16.log 2>&1
python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes 8x512,64x16 --iters 5 --moe-variants auto,mma128r,mma128tl,mma128f > $OUT/fwd-fp32.log 2>&1
# ===== gpu_call9.sh (0f3ae9f in .snap; .snapB = 0f3ae9f + experimental mma256vl (16,2,4,128,128,3), mma128yl
# (8,2,4,128,256,3), mma256ul (16,4,4,128,64,6), mma256zl (16,4,2,64,128,4), all LATE_REFILL)
timeout 240 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_engine.py tests/gpu/test_optimized_logits_download.py > $OUT/tests-engine.log 2>&1
cd ../.snapB && python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 64x16,16x128,8x512 --iters 10 --moe-variants auto,mma256vl,mma128yl,mma256ul,mma256zl > $OUT/fwd-bf16.log 2>&1
# ===== gpu_call10.sh (0f3ae9f): issue 10's shapes beside hf (results/h100-opt-hf-*-s8)
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1
timeout 170 $H compare --phases none --engines optimized,hf --dtype fp32 --seq-len 16 --samples 256 \
  --batch 64 --warmup 3 --budget-s 30 --out r --run-id h100-opt-hf-fp32-64x16-s8 --no-progress > $OUT/compare-fp32.log 2>&1
timeout 150 $H compare --phases none --engines optimized,hf --seq-len 512 --samples 32 \
  --batch 8 --warmup 3 --budget-s 30 --out r --run-id h100-opt-hf-8x512-s8 --no-progress > $OUT/compare-8x512.log 2>&1
$H compare --phases none --engines optimized,hf --seq-len 16 --samples 256 \
  --batch 64 --warmup 3 --budget-s 30 --out r --run-id h100-opt-hf-64x16-s8 --no-progress > $OUT/compare-64x16.log 2>&1
# ===== gpu_call11.sh (.snapB = 0d9ea08 + experimental bf16 geometries with 64-column warp tiles: mma128zl
# (8,2,4,256,128,3), mma128ql (8,2,4,256,64,5), mma256ql (16,4,2,128,128,3), all LATE_REFILL; not committed)
timeout 150 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_kernels.py -k "test_moe_grouped_gemms and (mma128zl or mma128ql or mma256ql)" > $OUT/tests.log 2>&1
python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 64x16,16x128,8x512 --iters 10 --moe-variants auto,mma128zl,mma128ql,mma256ql,auto > $OUT/fwd-bf16.log 2>&1
# ===== gpu_call12.sh (0d9ea08 + the attention helper's attention_mma.cu, kernels.py dispatch, tests, bench = the
# next commit): GPU tests, bf16 8 x 512 beside hf (results/h100-opt-hf-8x512-s8b), the bf16 forward shapes
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1 &
timeout 300 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_attention_mma.py tests/gpu/test_optimized_engine.py tests/gpu/test_optimized_decode.py -rfE > $OUT/tests.log 2>&1
timeout 60 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_kernels.py -k attention > $OUT/tests-attn.log 2>&1
wait
$H compare --phases none --engines optimized,hf --seq-len 512 --samples 32 \
  --batch 8 --warmup 3 --budget-s 30 --out r --run-id h100-opt-hf-8x512-s8b --no-progress > $OUT/compare-8x512.log 2>&1
python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 1x16,64x16,16x128,8x512,16x512 --iters 20 > $OUT/bf16-shapes.log 2>&1
# ===== gpu_call13.sh (60a00f4 + perf-notes): the whole optimized GPU suite, the bf16 8 x 512 profile
timeout 330 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_kernels.py tests/gpu/test_optimized_attention_mma.py tests/gpu/test_optimized_split_tf32.py tests/gpu/test_optimized_engine.py tests/gpu/test_optimized_gemv.py tests/gpu/test_optimized_decode.py tests/gpu/test_optimized_logits_download.py -rfE > $OUT/gpu-tests.log 2>&1
python -m optimized --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 8x512 --iters 5 --profile 8x512 > $OUT/bf16-8x512-profile.log 2>&1
# ===== gpu_call14.sh (fb93a09 + shortconv_tiled, then on for both dtypes): shortconv GPU tests (the -k filter also
# deselected the engine tests named beside it), forward A/B of the two ShortConv kernels
timeout 200 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_kernels.py -k "shortconv" tests/gpu/test_optimized_engine.py -rfE > $OUT/tests.log 2>&1
python ab_conv.py bf16 8x512,64x16 > $OUT/ab-conv-bf16.log 2>&1
python ab_conv.py fp32 64x16 > $OUT/ab-conv-fp32.log 2>&1
# ===== gpu_call15.sh (the next commit: shortconv_tiled on for bf16 only): engine and shortconv GPU tests
timeout 200 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_engine.py -rfE > $OUT/tests-engine.log 2>&1
timeout 100 python -m pytest -q -p no:cacheprovider tests/gpu/test_optimized_kernels.py -k shortconv > $OUT/tests-conv.log 2>&1
