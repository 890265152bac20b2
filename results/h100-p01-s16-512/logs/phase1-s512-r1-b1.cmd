/usr/bin/mpiexec --allow-run-as-root --bind-to none -n 1 /opt/torch/.venv/bin/python -m harness.worker --spec /work/main/r/h100-p01-s16-512/specs/phase1-s512-r1-b1.json
