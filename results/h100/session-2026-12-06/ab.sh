#!/bin/bash
# the A/B on its own (gpu7.sh's part 2 timed out at 130 s): same subset, same warm H100, right after gpu7.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache KVCOMPRESS_GIT_COMMIT=34dafa2 HF_HUB_OFFLINE=1
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
timeout 330 python3 tools/quality_ab.py --out-dir /tmp/ab -- --random-weights --tasks niah_single_1 --contexts 4K --samples 4 --methods $M
