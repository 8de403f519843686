#!/bin/bash
# Call 1: the int4/int2 kernels of this commit on the GPU (fast vs hf tokens, each kernel vs its twin), the int
# attention's launch choices timed (tools/attention_sweep.py --int), then TTFT and decode at 8K batch 1 and 8 of
# vanilla / int4 / int2 / fp8 (the prefill now quantizes each layer in one kernel); then, in the time left, capacity
# (call2.sh's command, resumed by a later call).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache HF_HUB_OFFLINE=1 KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown}
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/gpu.txt
timeout 60 python3 tools/device_limits.py >> $OUT/gpu.txt 2>&1
t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 150 python3 tests/kernel_check.py gpu; echo "rc=$?") > $OUT/kernel-check.log 2>&1
echo "kernel check gpu $((SECONDS - t0)) s" >> $OUT/times.txt; t0=$SECONDS
timeout 150 python3 tools/attention_sweep.py --int --shapes 8x8192,32x8192 > $OUT/int-sweep.log 2>&1
echo "int sweep rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt; t0=$SECONDS
timeout 150 python3 benchmark.py --random-weights --contexts 8K --methods vanilla,int4,int2,fp8 \
    --batch 1,8 --admission cloned --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant-8k.json \
    > $OUT/quant-8k.log 2>&1
echo "quant 8K rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt
timeout 30 python3 benchmark.py check $OUT/quant-8k.json > $OUT/quant-8k-check.log 2>&1
total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
budget=$([ "$total" -gt 100000 ] && echo 80GiB || echo 72GiB)
echo "capacity budget $budget" >> $OUT/times.txt; t0=$SECONDS
timeout $((585 - SECONDS)) python3 benchmark.py capacity --random-weights --budget $budget --contexts 8K,32K \
    --methods vanilla,fp8,int4,knorm@0.5+fp8,dms-8x,dms-8x+fp8 --out $OUT/capacity.json > $OUT/capacity.log 2>&1
echo "capacity rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt
cat $OUT/gpu.txt $OUT/times.txt; grep -v "rel err" $OUT/kernel-check.log | tail -4; grep -A9 "^int" $OUT/int-sweep.log | cut -c1-150
grep "^\[" $OUT/quant-8k.log | cut -c1-200; head -16 $OUT/quant-8k-check.log | cut -c1-200
grep -v "^  batch\|^  context" $OUT/capacity.log | tail -22 | cut -c1-200
