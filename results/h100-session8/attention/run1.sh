#!/bin/bash
# Device call (from .snapC): tests, attention microbench, forward A/B (bf16 mma vs simt), fp32 forward.
mkdir -p /tmp/cubin && cp .cubin/* /tmp/cubin/ 2>/dev/null; export LFM2_CUBIN_CACHE=/tmp/cubin
T0=$SECONDS
nvcc -arch=sm_90 -cubin -O3 -Xptxas -v -o /tmp/am.cubin optimized/attention_mma.cu > $OUT/ptxas.log 2>&1
timeout 90 python -m pytest -q -x tests/gpu/test_optimized_attention_mma.py > $OUT/tests.log 2>&1; echo "new tests rc=$? t=$((SECONDS-T0))" | tee -a $OUT/summary.txt
timeout 60 python -m pytest -q tests/gpu/test_optimized_kernels.py -k attention >> $OUT/tests.log 2>&1; echo "old attention tests rc=$? t=$((SECONDS-T0))" | tee -a $OUT/summary.txt
timeout 60 python attn_bench.py $OUT/attn_bench.json > $OUT/attn_bench.log 2>&1; echo "bench rc=$? t=$((SECONDS-T0))" | tee -a $OUT/summary.txt
for var in mma simt; do
  timeout 100 python fwd_ab.py $var --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 8x512,64x16,1x16 --iters 10 > $OUT/fwd_$var.log 2>&1; echo "fwd $var rc=$? t=$((SECONDS-T0))" | tee -a $OUT/summary.txt
done
timeout 60 python fwd_ab.py mma --preset lfm2-8b-a1b --weights gpu --dtype fp32 --shapes 64x16 --iters 5 > $OUT/fwd_fp32.log 2>&1; echo "fwd fp32 rc=$? t=$((SECONDS-T0))" | tee -a $OUT/summary.txt
timeout 45 python -m pytest -q tests/bench/test_bench_optimized.py -m gpu --benchmark-only -k "attention and bf16" --benchmark-max-time=0.1 --benchmark-columns=median >> $OUT/tests.log 2>&1; echo "pytest bench rc=$? t=$((SECONDS-T0))" | tee -a $OUT/summary.txt
echo "==== summary"; cat $OUT/summary.txt; grep -E "passed|failed|rror" $OUT/tests.log | tail -6
for f in fwd_mma fwd_simt fwd_fp32; do echo "-- $f"; grep -vE "^\s*$" $OUT/$f.log | tail -6; done
echo "-- attention microbench"; tail -14 $OUT/attn_bench.log
