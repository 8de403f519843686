#!/bin/bash
# Session m, a short call for any GPU (~400 s, DEADLINE): the GPU kernel checks on main (the int4 launch that splits
# nibbles, 7549ef3, and everything after 332fc89 never ran them), the int launch sweep, then issue 24's 8K decode
# rows: vanilla, fp8, int4, knorm@0.5+fp8 at batch 1 / 8 / 32 (int4's first end-to-end rows on the new launch), and
# their checks.
# `COMMIT=<sha> bash results/h200/session-2026-12-07-m/callB.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
source tools/device_checks.sh  # sets t0 to its end
timeout 100 python3 tools/attention_sweep.py --int --shapes 8x8192,32x8192,8x32768 > $OUT/int-sweep.log 2>&1
echo "int sweep rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
left=$(( ${DEADLINE:-400} - SECONDS - 25 ))
timeout $left python3 benchmark.py --random-weights --contexts 8K --methods vanilla,fp8,int4,knorm@0.5+fp8 \
    --batch 1,8,32 --admission cloned --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant.json \
    > $OUT/quant.log 2>&1
echo "quant 8K rc=$? $((SECONDS - t0)) s (limit $left s)" >> $OUT/gpu.txt
timeout 20 python3 benchmark.py check $OUT/quant.json > $OUT/checks.log 2>&1
cat $OUT/gpu.txt; tail -n 1 $OUT/kernel-check-gpu.log $OUT/kernel-check-dms-gpu.log | cut -c1-200
grep -A3 "^int4" $OUT/int-sweep.log | cut -c1-170; grep "^\[" $OUT/quant.log | cut -c1-170
sed -n "/^3\./,/^5\./p" $OUT/checks.log | cut -c1-170
