#!/bin/bash
# Call 2 (commit dbe9fc9): int4/int2 on the fast engine compiled and checked on the GPU, then decode speed at 8K,
# batch 1 and 8, of vanilla / fp8 / int4 / int2 / knorm@0.5+fp8 / knorm@0.5+int4 (random weights, cloned rows).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache HF_HUB_OFFLINE=1 KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown}
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/gpu2.txt
t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 150 python3 tests/kernel_check.py gpu; echo "rc=$?") > $OUT/kernel-check-2.log 2>&1
echo "kernel check gpu $((SECONDS - t0)) s" >> $OUT/times2.txt; t0=$SECONDS
timeout $((400 - SECONDS)) python3 benchmark.py --random-weights --contexts 8K \
    --methods vanilla,fp8,int4,int2,knorm@0.5+fp8,knorm@0.5+int4 --batch 1,8 --admission cloned \
    --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant-8k.json > $OUT/quant-8k.log 2>&1
echo "quant 8K rc=$? $((SECONDS - t0)) s" >> $OUT/times2.txt
timeout 60 python3 benchmark.py check $OUT/quant-8k.json > $OUT/quant-8k-check.log 2>&1
cat $OUT/gpu2.txt $OUT/times2.txt; grep -v "rel err" $OUT/kernel-check-2.log | tail -12; grep "^\[" $OUT/quant-8k.log; tail -5 $OUT/quant-8k.log; head -12 $OUT/quant-8k-check.log
