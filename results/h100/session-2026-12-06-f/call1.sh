#!/bin/bash
# Session f, call 1 (written in session e as next.sh): the kernels checked on the GPU (gpu, dms-gpu), the fp8
# (with its scales folded out of the loop: FOLD_SCALES) and int attention's launch choices timed (fp8 at batch 8 ran at 74 % of its bytes prediction on an H200, slower
# than vanilla; int4 near 50 % on an H100), then the decode table at 8K batch 1 / 8 / 32 and its check. Second call:
# call2.sh: capacity (fp8, int4 now staged) at 8K and 32K. Pass --bandwidth/--flops to check on an H100.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache HF_HUB_OFFLINE=1 KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown}
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/gpu.txt
timeout 60 python3 tools/device_limits.py >> $OUT/gpu.txt 2>&1
t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 60 python3 tests/kernel_check.py gpu; echo "rc=$?") > $OUT/kernel-check.log 2>&1
echo "kernel check gpu $((SECONDS - t0)) s" >> $OUT/times.txt; t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 90 python3 tests/kernel_check.py dms-gpu; echo "rc=$?") > $OUT/kernel-check-dms.log 2>&1
echo "kernel check dms-gpu $((SECONDS - t0)) s" >> $OUT/times.txt; t0=$SECONDS
timeout 150 python3 tools/attention_sweep.py --fp8 --shapes 8x8192,32x8192 > $OUT/fp8-sweep.log 2>&1
echo "fp8 sweep rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt; t0=$SECONDS
timeout 70 python3 tools/attention_sweep.py --int --shapes 8x8192,32x8192 > $OUT/int-sweep.log 2>&1
echo "int sweep rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt; t0=$SECONDS
timeout $((560 - SECONDS)) python3 benchmark.py --random-weights --contexts 8K \
    --methods vanilla,fp8,int4,knorm@0.5+fp8 --batch 1,8,32 --admission cloned \
    --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant-8k.json > $OUT/quant-8k.log 2>&1
echo "quant 8K rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt
timeout 20 python3 benchmark.py check $OUT/quant-8k.json > $OUT/quant-8k-check.log 2>&1
cat $OUT/gpu.txt $OUT/times.txt; grep -v "rel err" $OUT/kernel-check.log | tail -2 | cut -c1-200; tail -2 $OUT/kernel-check-dms.log | cut -c1-200
grep -v skip $OUT/fp8-sweep.log | head -30 | cut -c1-150; grep -A4 "^int" $OUT/int-sweep.log | cut -c1-130
grep "^\[" $OUT/quant-8k.log | cut -c1-160; sed -n '/^3\./,/^4\./p' $OUT/quant-8k-check.log | cut -c1-170
