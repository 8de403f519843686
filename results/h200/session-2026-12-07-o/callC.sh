#!/bin/bash
# Session o, an H200 (`needs_h200`), ~590 s, after callA.sh's kernel checks passed on this commit: issue 24's decode
# table at 8K and 32K (session l's callC.sh without the checks), then `benchmark.py check` (item 3: speed-up against
# the bytes-per-step prediction). `COMMIT=<sha> bash results/h200/session-2026-12-07-o/callC.sh`, carry
# [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
t0=$SECONDS
left=$(( ${DEADLINE:-585} - SECONDS - 40 ))
timeout $left python3 benchmark.py --random-weights --contexts ${CONTEXTS:-8K,32K} --methods vanilla,fp8,int4,knorm@0.5+fp8 \
    --batch 1,8,32 --admission cloned --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant.json \
    > $OUT/quant.log 2>&1
echo "quant ${CONTEXTS:-8K,32K} rc=$? $((SECONDS - t0)) s (limit $left s)" >> $OUT/gpu.txt
timeout 30 python3 benchmark.py check $OUT/quant.json > $OUT/checks.log 2>&1
cat $OUT/gpu.txt; grep "^\[" $OUT/quant.log | cut -c1-170; sed -n "/^3\./,/^5\./p" $OUT/checks.log | cut -c1-170
