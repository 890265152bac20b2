#!/bin/bash
# Session 4, GPU call 2: issue 5's phase 0 at 16 and 512 tokens (phase 1 next call, same run id),
# then the GPU tests call 1 did not reach (tests/gpu/test_phase5_mpi.py).
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
t0=$(date +%s)
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1
echo "make-model rc=$? $(( $(date +%s)-t0 )) s"
timeout 420 $H compare --phases 0 --seq-len 16,512 --samples 1 --batch 1 --warmup 0 --budget-s 1 --timeout-s 400 \
  --out r --run-id h100-p01-s16-512 --no-progress > $OUT/compare-p0.log 2>&1
echo "compare rc=$? $(( $(date +%s)-t0 )) s"
timeout $(( 590 - ($(date +%s)-t0) )) python -m pytest tests/gpu/test_phase5_mpi.py -q -p no:cacheprovider -rfE > $OUT/gpu-tests-mpi.log 2>&1
echo "mpi tests rc=$? $(( $(date +%s)-t0 )) s"
(cd r && tar czf $OUT/runs.tgz .)
tail -3 $OUT/gpu-tests-mpi.log
cut -d, -f1-12 r/*/summary.csv
#!/bin/bash
# Session 4, GPU call 3: issue 5's phase 1 at 16 and 512 tokens (phase 0 ran in call 2, same run id).
source .devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
H="python -m harness"
t0=$(date +%s)
$H make-model --preset lfm2-8b-a1b --quiet > $OUT/make-model.log 2>&1
echo "make-model rc=$? $(( $(date +%s)-t0 )) s"
timeout 520 $H compare --phases 1 --seq-len 16,512 --samples 1 --batch 1 --warmup 0 --budget-s 1 --timeout-s 500 \
  --out r --run-id h100-p01-s16-512 --no-progress > $OUT/compare-p0.log 2>&1
echo "compare rc=$? $(( $(date +%s)-t0 )) s"
(cd r && tar czf $OUT/runs.tgz .)
cut -d, -f1-12 r/*/summary.csv
