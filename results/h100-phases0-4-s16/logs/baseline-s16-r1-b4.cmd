/usr/bin/mpiexec --allow-run-as-root --bind-to none -n 1 /opt/torch/.venv/bin/python -m harness.worker --spec /work/main/results/h100-phases0-4-s16/specs/baseline-s16-r1-b4.json
