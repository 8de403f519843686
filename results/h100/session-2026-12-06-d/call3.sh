#!/bin/bash
# Call 3: the int4/int2 attention with one scale vector per key-group block and unpacking by shifts (call 2 at
# dbe9fc9: int4 83.8 tok/s at batch 1 against vanilla's 149.5, 157 aggregate at batch 8 against 833), the
# prefill's quantizer without full-size scale copies (int4 TTFT 0.401 s against 0.315); the GPU check again.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache HF_HUB_OFFLINE=1 KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown}
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/gpu3.txt
t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 150 python3 tests/kernel_check.py gpu; echo "rc=$?") > $OUT/kernel-check-3.log 2>&1
echo "kernel check gpu $((SECONDS - t0)) s" >> $OUT/times3.txt; t0=$SECONDS
timeout $((440 - SECONDS)) python3 benchmark.py --random-weights --contexts 8K \
    --methods vanilla,fp8,int4,int2,knorm@0.5+fp8,knorm@0.5+int4 --batch 1,8,32 --admission cloned \
    --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant-8k.json > $OUT/quant-8k.log 2>&1
echo "quant 8K rc=$? $((SECONDS - t0)) s" >> $OUT/times3.txt
timeout 40 python3 benchmark.py check $OUT/quant-8k.json > $OUT/quant-8k-check.log 2>&1
cat $OUT/gpu3.txt $OUT/times3.txt; grep -v "rel err" $OUT/kernel-check-3.log | tail -3; grep "^\[" $OUT/quant-8k.log; head -22 $OUT/quant-8k-check.log | cut -c1-200
