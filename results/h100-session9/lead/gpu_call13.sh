source ../.devwheels/setup.sh
export PYTHONUNBUFFERED=1 LFM2_CACHE=$PWD/.cache LFM2_GIT_COMMIT=$(cat .commit)
cd ../.snapB
python moe_probe.py 4096 wg256,wg256ne,wg256ns,wg256,wg256ne,wg256ns 2>&1 | tee $OUT/probe4096.log
python moe_probe.py 8192 wg256,wg256ne,wg256ns 2>&1 | tee $OUT/probe8192.log
