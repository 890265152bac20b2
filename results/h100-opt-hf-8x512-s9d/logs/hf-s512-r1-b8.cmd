/usr/bin/mpiexec --allow-run-as-root --bind-to none -n 1 /opt/torch/.venv/bin/python -m harness.worker --spec /work/main/.snap/r/h100-opt-hf-8x512-s9d/specs/hf-s512-r1-b8.json
