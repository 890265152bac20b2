/usr/bin/mpiexec --allow-run-as-root --bind-to none -n 2 /opt/torch/.venv/bin/python -m harness.worker --spec /work/main/r/h100-p5-s128-r2/specs/phase5-s128-r2-b1024.json
