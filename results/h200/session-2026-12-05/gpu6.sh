#!/bin/bash
# issue 23 on the H200 (call 1): kernel check, RULER 4K x 50 samples x 9 methods (quality mode), prefill probe 4K/32K
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export KVCOMPRESS_CACHE=.carry/cache KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown} HF_HUB_OFFLINE=1
D=$OUT/h200; mkdir -p $D
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $D/gpu.txt
python3 -c "import torch, transformers, kvpress; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name(0))" >> $D/gpu.txt 2>&1
t0=$SECONDS
KVCOMPRESS_CHECK_DEVICE=cuda timeout 120 python3 tests/kernel_check.py gpu > $D/kernel_check_gpu.log 2>&1; echo "kernel_check gpu rc=$? $((SECONDS - t0)) s" >> $D/times.txt
t0=$SECONDS
timeout 390 python3 test_long_context.py --random-weights --tasks ruler --contexts 4K --samples 50 --methods $M --out $D/ruler-4k-50.json > $D/ruler-4k-50.log 2>&1; echo "ruler 4K x50 rc=$? $((SECONDS - t0)) s (wall, incl. model build)" >> $D/times.txt
python3 -c "import json; d=json.load(open('$D/ruler-4k-50.json')); print(json.dumps(d['run'].get('quality'))); print(len(d['results']), 'records')" >> $D/times.txt 2>&1
t0=$SECONDS
left=$((585 - SECONDS)); [ $left -gt 30 ] && timeout $left python3 tools/quality_ab.py --prefill 1 --out-dir $D/prefill -- --random-weights --tasks niah_single_1 --contexts 4K,32K --samples 1 --methods $M > $D/prefill.log 2>&1; echo "prefill probe rc=$? $((SECONDS - t0)) s" >> $D/times.txt
cat $D/gpu.txt $D/times.txt; tail -4 $D/kernel_check_gpu.log; tail -6 $D/ruler-4k-50.log; tail -4 $D/prefill.log
