#!/bin/bash
# Device call 2 (from .snapC): kernel-only (CUDA graph) attention times incl. sdpa; forward A/B again in the
# other order (simt first) with --accuracy 2x512 (float32 GPU reference) on both.
mkdir -p /tmp/cubin && cp .cubin/* /tmp/cubin/ 2>/dev/null; export LFM2_CUBIN_CACHE=/tmp/cubin
T0=$SECONDS
timeout 90 python attn_graph.py $OUT/attn_graph.json > $OUT/attn_graph.log 2>&1; echo "graph bench rc=$? t=$((SECONDS-T0))" | tee -a $OUT/summary.txt
for var in simt mma; do
  timeout 130 python fwd_ab.py $var --preset lfm2-8b-a1b --weights gpu --dtype bf16 --shapes 8x512,16x128,64x16,1x16 --iters 10 --accuracy 2x512 > $OUT/fwd_$var.log 2>&1; echo "fwd $var rc=$? t=$((SECONDS-T0))" | tee -a $OUT/summary.txt
done
echo "==== summary"; cat $OUT/summary.txt
for f in fwd_simt fwd_mma; do echo "-- $f"; grep -vE "^\s*$" $OUT/$f.log | tail -9; done
echo "-- attention kernel-only (graph)"; tail -22 $OUT/attn_graph.log
