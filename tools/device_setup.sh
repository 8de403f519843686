# Sourced first by a device call's script (results/*/call*.sh): the carried wheels installed for this machine's
# python, the environment the project's commands need offline, the GPU's name and measured limits in $OUT/gpu.txt.
# Needs .whl/ and .carry/ carried (CLAUDE.md); COMMIT names the checkout in every record.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache HF_HUB_OFFLINE=1 KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > $OUT/gpu.txt
timeout 60 python3 tools/device_limits.py >> $OUT/gpu.txt 2>&1
