#!/bin/bash
# Session l, an H200 call (~580 s), on main: the GPU kernel checks (last passed on an H100 at 332fc89, before the
# launch split nibbles), then issue 24's decode table at 8K and 32K (session j's nextB.sh, its limit the time left).
# `COMMIT=<sha> bash results/h200/session-2026-12-07-l/callC.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
source tools/device_checks.sh  # sets t0 to its end
left=$(( ${DEADLINE:-575} - SECONDS - 40 ))
timeout $left python3 benchmark.py --random-weights --contexts 8K,32K --methods vanilla,fp8,int4,knorm@0.5+fp8 \
    --batch 1,8,32 --admission cloned --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant.json \
    > $OUT/quant.log 2>&1
echo "quant 8K,32K rc=$? $((SECONDS - t0)) s (limit $left s)" >> $OUT/gpu.txt
timeout 30 python3 benchmark.py check $OUT/quant.json > $OUT/checks.log 2>&1
cat $OUT/gpu.txt; tail -n 1 $OUT/kernel-check-gpu.log $OUT/kernel-check-dms-gpu.log | cut -c1-200
grep "^\[" $OUT/quant.log | cut -c1-170; sed -n "/^3\./,/^5\./p" $OUT/checks.log | cut -c1-170
