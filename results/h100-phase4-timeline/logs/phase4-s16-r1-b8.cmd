/usr/bin/mpiexec --allow-run-as-root --bind-to none -n 1 /opt/torch/.venv/bin/python -m harness.worker --spec /work/main/r/h100-phase4-timeline/specs/phase4-s16-r1-b8.json
