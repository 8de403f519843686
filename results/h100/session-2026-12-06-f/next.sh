#!/bin/bash
# For the next session's first call (~540 s), on an H200 (every session-f figure is an H100's): the GPU checks, the
# int kernel's launch choices (4 / 8 programs a SM, group_keys) by tools/attention_sweep.py --int, the decode table
# at 8K (batch 1 / 8 / 32), the ragged fp8 kernel (dms-8x+fp8) with and without folded scales, then 32K (1 / 8, as
# many cells as the call allows) and the checks (issue 24: each within 10 % of its bytes prediction, >= 70 % of the
# roofline batched). Second call: call2.sh's capacity (80 GiB on a card over 100 GB). `COMMIT=<sha> bash results/h100/session-2026-12-06-f/next.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 60 python3 tests/kernel_check.py gpu; echo "rc=$?") > $OUT/kernel-check.log 2>&1
echo "kernel check gpu $((SECONDS - t0)) s" >> $OUT/times.txt; t0=$SECONDS
timeout 90 python3 tools/attention_sweep.py --int --shapes 8x8192,32x8192 > $OUT/int-sweep.log 2>&1
echo "int sweep rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt; t0=$SECONDS
timeout 300 python3 benchmark.py --random-weights --contexts 8K \
    --methods vanilla,fp8,int4,knorm@0.5+fp8 --batch 1,8,32 --admission cloned \
    --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant.json > $OUT/quant.log 2>&1
echo "quant 8K rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt; t0=$SECONDS
timeout 60 python3 tools/attention_sweep.py --fp8 --ragged-only > $OUT/ragged-fp8-sweep.log 2>&1
echo "ragged fp8 sweep rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt; t0=$SECONDS
timeout $((565 - SECONDS)) python3 benchmark.py --random-weights --contexts 32K \
    --methods vanilla,fp8,int4,knorm@0.5+fp8 --batch 1,8 --admission cloned \
    --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant-32k.json > $OUT/quant-32k.log 2>&1
echo "quant 32K rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt
timeout 20 python3 benchmark.py check $OUT/quant.json > $OUT/quant-check.log 2>&1
timeout 20 python3 benchmark.py check $OUT/quant-32k.json > $OUT/quant-32k-check.log 2>&1
cat $OUT/gpu.txt $OUT/times.txt; grep -v "rel err" $OUT/kernel-check.log | tail -2 | cut -c1-200
grep -A4 "^int" $OUT/int-sweep.log | cut -c1-140; cut -c1-150 $OUT/ragged-fp8-sweep.log
grep "^\[" $OUT/quant.log $OUT/quant-32k.log | cut -c1-170; sed -n "/^3\./,/^4\./p" $OUT/quant-check.log $OUT/quant-32k-check.log | cut -c1-170
