# Session 10 call 5 (d371bd5): the L2 prefetch of the next mixer's weights in the router's idle HBM time
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
cp results/h100-session10/lead/l2_prefetch.cu results/h100-session10/lead/probe_prefetch.py .
python probe_prefetch.py $OUT/prefetch.json > $OUT/prefetch.log 2>&1; tail -8 $OUT/prefetch.log
