/usr/bin/mpiexec --allow-run-as-root --bind-to none -n 1 /opt/torch/.venv/bin/python -m harness.worker --spec /root/out/r/h100-p45/specs/phase4-s128-r1-b1024.json
