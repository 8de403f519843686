#!/bin/bash
# Session f, call 3 (the ~300 s of device time left): after 882b28d (fp8 scales folded, 8 programs a SM, 3 stages;
# int attention block 64) the GPU check and the batched 8K decode table again, to hold against call 1's.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache HF_HUB_OFFLINE=1 KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown}
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/gpu.txt
t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 60 python3 tests/kernel_check.py gpu; echo "rc=$?") > $OUT/kernel-check.log 2>&1
echo "kernel check gpu $((SECONDS - t0)) s" >> $OUT/times.txt; t0=$SECONDS
timeout $((200 - SECONDS)) python3 benchmark.py --random-weights --contexts 8K \
    --methods vanilla,fp8,int4,knorm@0.5+fp8 --batch 8,32 --admission cloned \
    --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant-8k.json > $OUT/quant-8k.log 2>&1
echo "quant 8K rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt
timeout 15 python3 benchmark.py check $OUT/quant-8k.json > $OUT/quant-8k-check.log 2>&1
cat $OUT/gpu.txt $OUT/times.txt; grep -v "rel err" $OUT/kernel-check.log | tail -2 | cut -c1-200
grep "^\[" $OUT/quant-8k.log | cut -c1-160; sed -n '/^3\./,/^4\./p' $OUT/quant-8k-check.log | cut -c1-170
