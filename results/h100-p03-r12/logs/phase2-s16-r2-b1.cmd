/usr/bin/mpiexec --allow-run-as-root --bind-to none -n 2 /opt/torch/.venv/bin/python -m harness.worker --spec /work/main/r/h100-p03-r12/specs/phase2-s16-r2-b1.json
