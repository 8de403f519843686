#!/bin/bash
# issue 23 (and 24), call 1 on one GPU (gpu.txt says which): the kernel checks (forced decode; dms-8x+fp8), then RULER 4K x 50 x 9 methods
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export KVCOMPRESS_CACHE=.carry/cache KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown} HF_HUB_OFFLINE=1
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $OUT/gpu.txt
python3 -c "import torch, transformers, kvpress; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name(0))" >> $OUT/gpu.txt 2>&1
t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 100 python3 tests/kernel_check.py gpu; echo "rc=$?"; timeout 100 python3 tests/kernel_check.py dms-gpu; echo "rc=$?") > $OUT/kernel-check.log 2>&1
echo "kernel checks $((SECONDS - t0)) s" >> $OUT/times.txt
t0=$SECONDS; left=$((585 - SECONDS))
timeout $left python3 test_long_context.py --random-weights --tasks ruler --contexts 4K --samples 50 --methods $M --out /tmp/ruler-4k-50.json > $OUT/ruler-4k-50.log 2>&1; echo "ruler 4K x50 rc=$? $((SECONDS - t0)) s (wall, incl. model build)" >> $OUT/times.txt
python3 -c "import json; d=json.load(open('/tmp/ruler-4k-50.json')); print(json.dumps(d['run'].get('quality'))); print(len(d['results']), 'records')" >> $OUT/times.txt 2>&1
gzip -c /tmp/ruler-4k-50.json > $OUT/ruler-4k-50.json.gz
cat $OUT/gpu.txt $OUT/times.txt; tail -4 $OUT/kernel-check.log; tail -6 $OUT/ruler-4k-50.log
