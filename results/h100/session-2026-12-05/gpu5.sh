#!/bin/bash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export KVCOMPRESS_CACHE=.carry/cache KVCOMPRESS_GIT_COMMIT=e730f43+fixes HF_HUB_OFFLINE=1
D=$OUT/h100c; mkdir -p $D
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
t0=$SECONDS; timeout 150 python3 tools/quality_ab.py --prefill 2 --out-dir $D/prefill -- --random-weights --tasks niah_single_1 --contexts 4K,16K --samples 2 --methods $M > $D/prefill.log 2>&1; echo "prefill probe rc=$? $((SECONDS - t0)) s" >> $D/times.txt
cat $D/times.txt; tail -15 $D/prefill.log
