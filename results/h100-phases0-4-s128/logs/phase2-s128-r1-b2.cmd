/usr/bin/mpiexec --allow-run-as-root --bind-to none -n 1 /opt/torch/.venv/bin/python -m harness.worker --spec /work/main/results/h100-phases0-4-s128/specs/phase2-s128-r1-b2.json
