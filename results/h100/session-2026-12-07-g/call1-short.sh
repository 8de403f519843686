#!/bin/bash
# call1.sh on a short lease (~300 s), without its RULER run (apply chunk-argument.patch first, as for call1.sh): the
# GPU check of the fast engine, the int kernel's launch choices timed, and the 8K decode table for vanilla, fp8 and
# int4 at batch 8 and 32 with its check.
# `COMMIT=<sha> bash results/h100/session-2026-12-07-g/call1-short.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 90 python3 tests/kernel_check.py gpu; echo "rc=$?") > $OUT/kernel-check.log 2>&1
echo "kernel check gpu $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
timeout 80 python3 tools/attention_sweep.py --int --shapes 8x8192,32x8192 > $OUT/sweeps.log 2>&1
echo "int sweep rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
timeout $((${DEADLINE:-300} - SECONDS)) python3 benchmark.py --random-weights --contexts 8K --methods vanilla,fp8,int4 \
    --batch 8,32 --admission cloned --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant.json \
    > $OUT/quant.log 2>&1
echo "quant 8K rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt
timeout 20 python3 benchmark.py check $OUT/quant.json > $OUT/checks.log 2>&1
cat $OUT/gpu.txt; grep -v "rel err" $OUT/kernel-check.log | tail -3 | cut -c1-200
grep -A6 "^int" $OUT/sweeps.log | cut -c1-150; grep "^\[" $OUT/quant.log | cut -c1-170
sed -n "/^3\./,/^4\./p" $OUT/checks.log | cut -c1-170
