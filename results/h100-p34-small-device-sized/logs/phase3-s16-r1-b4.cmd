/usr/bin/mpiexec --allow-run-as-root --bind-to none -n 1 /opt/torch/.venv/bin/python -m harness.worker --spec /work/main/r/h100-p34-small-device-sized/specs/phase3-s16-r1-b4.json
