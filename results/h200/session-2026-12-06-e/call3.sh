#!/bin/bash
# Call 3 (253 s of device time left; call2.sh did not get a machine): the restored int kernel (bytes loaded once and
# unpacked, block 32) checked on the GPU, then int4 against vanilla at 8K, batch 1 and 8.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache HF_HUB_OFFLINE=1 KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown}
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/gpu.txt
t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 50 python3 tests/kernel_check.py gpu; echo "rc=$?") > $OUT/kernel-check.log 2>&1
echo "kernel check gpu $((SECONDS - t0)) s" >> $OUT/times.txt; t0=$SECONDS
timeout $((165 - SECONDS)) python3 benchmark.py --random-weights --contexts 8K --methods vanilla,int4 --batch 1,8 \
    --admission cloned --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/int4-8k.json > $OUT/int4-8k.log 2>&1
echo "int4 8K rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt
cat $OUT/gpu.txt $OUT/times.txt; grep -v "rel err" $OUT/kernel-check.log | tail -3 | cut -c1-250
grep "^\[" $OUT/int4-8k.log | cut -c1-160
