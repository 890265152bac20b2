/usr/bin/mpiexec --allow-run-as-root --bind-to none -n 1 /opt/torch/.venv/bin/python -m harness.worker --spec /work/main/r/h100-p03-r12/specs/phase1-s128-r1-b1.json
