/usr/bin/mpiexec --allow-run-as-root --bind-to none -n 2 /opt/torch/.venv/bin/python -m harness.worker --spec /work/main/r/h100-p45-s16-s5/specs/phase5-s16-r2-b1024.json
