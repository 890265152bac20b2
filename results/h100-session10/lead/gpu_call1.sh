# Session 10 call 1 (HEAD ae83d00 + the probe files): where the batch-1 decode chain's links cost
set -x
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
cp results/h100-session10/lead/gemv_probe.cu results/h100-session10/lead/probe_links.py .
python probe_links.py $OUT/probe.json 2>&1 | tee $OUT/probe.log | grep -v "^ *$" | tail -14
