source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
which ncu nsys; ls /usr/local/cuda*/bin 2>/dev/null | grep -i -E "ncu|nsys|nsight" ; ls /opt 2>/dev/null
nvidia-smi --query-gpu=clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu --format=csv
cd ../.snapB
python moe_probe.py 4096 wg256,wg256ne,wg256nf,wg256nn,wg256pure,mma256wl,wg256 2>&1 | tee $OUT/probe4096.log
python moe_probe.py 8192 wg256,wg256pure 2>&1 | tee $OUT/probe8192.log
python moe_probe.py 1024 wg256,wg256pure 2>&1 | tee $OUT/probe1024.log
nvidia-smi --query-gpu=clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu --format=csv
