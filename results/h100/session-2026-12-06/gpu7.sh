#!/bin/bash
# issue 23 on one GPU (H200, or H100 when no H200 starts; gpu.txt says which): RULER 4K x 50 samples x 9 methods with the questions fed by the decode, the A/B
# against the measured path on one subset, then RULER 32K x 20 with the time left (call 3 resumes it: gpu8.sh)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export KVCOMPRESS_CACHE=.carry/cache KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown} HF_HUB_OFFLINE=1
D=$OUT/gpu; mkdir -p $D
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $D/gpu.txt
python3 -c "import torch, transformers, kvpress; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name(0))" >> $D/gpu.txt 2>&1
t0=$SECONDS
timeout 330 python3 test_long_context.py --random-weights --tasks ruler --contexts 4K --samples 50 --methods $M --out $D/ruler-4k-50.json > $D/ruler-4k-50.log 2>&1; echo "ruler 4K x50 rc=$? $((SECONDS - t0)) s (wall, incl. model build)" >> $D/times.txt
python3 -c "import json; d=json.load(open('$D/ruler-4k-50.json')); print(json.dumps(d['run'].get('quality'))); print(len(d['results']), 'records')" >> $D/times.txt 2>&1
t0=$SECONDS
left=$((480 - SECONDS)); [ $left -gt 60 ] && timeout $left python3 tools/quality_ab.py --out-dir $D/ab-4k -- --random-weights --tasks niah_single_1 --contexts 4K --samples 4 --methods $M > $D/ab-4k.log 2>&1; echo "A/B rc=$? $((SECONDS - t0)) s" >> $D/times.txt
t0=$SECONDS
left=$((590 - SECONDS)); [ $left -gt 60 ] && timeout $left python3 test_long_context.py --random-weights --tasks ruler --contexts 32K --samples 20 --methods $M --out $D/ruler-32k-20.json > $D/ruler-32k-20.log 2>&1; echo "ruler 32K x20 (part 1) rc=$? $((SECONDS - t0)) s" >> $D/times.txt
cat $D/gpu.txt $D/times.txt; tail -6 $D/ruler-4k-50.log; tail -8 $D/ab-4k.log; tail -4 $D/ruler-32k-20.log
