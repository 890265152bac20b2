# Session 10 call 9 (5824899 + norm_route_folded in gemv.cu): the folded-router probe
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
cp results/h100-session10/lead/probe_folded.py .
python probe_folded.py $OUT/folded.json 2>&1 | tee $OUT/folded.log | tail -8
