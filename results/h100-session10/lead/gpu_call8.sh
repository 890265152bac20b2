# Session 10 call 8 (working tree = d371bd5 + embed_norm + argmax advance): the HBM read microbenchmark
# (register loads vs TMA bulk copies), then 1x16 timing and its eager kernel profile
source ../.devwheels/setup.sh && export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
cp results/h100-session10/lead/read_bw.cu results/h100-session10/lead/read_bw.py .
python read_bw.py 2>&1 | tee $OUT/read_bw.log
python -m optimized --preset lfm2-8b-a1b --weights gpu --shapes 1x16 --iters 30 --profile 1x16 > $OUT/profile_1x16.log 2>&1
grep -m1 "1x16\|ms " $OUT/profile_1x16.log; head -40 $OUT/profile_1x16.log | tail -30
