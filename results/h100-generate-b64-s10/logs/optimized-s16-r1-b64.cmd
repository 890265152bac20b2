/usr/bin/mpiexec --allow-run-as-root --bind-to none -n 1 /opt/torch/.venv/bin/python -m harness.worker --spec /work/main/.snap/r/h100-generate-b64-s10/specs/optimized-s16-r1-b64.json
