source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
timeout 150 python nvml_probe.py 2>&1 | grep -v "^frame\|^  " | tee $OUT/nvml-probe.log
mpiexec -n 1 python -c "import os; print('affinity under mpiexec', len(os.sched_getaffinity(0)))"; python -c "import os; print('affinity plain', len(os.sched_getaffinity(0)))"
