#!/bin/bash
# For the next session's H200 (~560 s), on main: issue 24's decode table at 8K and 32K (vanilla / fp8 / int4 /
# knorm@0.5+fp8 at batch 1, 8, 32) and its check (item 3: speed-up against the bytes prediction; item 4: TTFT).
# `COMMIT=<sha> bash results/h100/session-2026-12-07-j/nextB.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
t0=$SECONDS
timeout 500 python3 benchmark.py --random-weights --contexts 8K,32K --methods vanilla,fp8,int4,knorm@0.5+fp8 \
    --batch 1,8,32 --admission cloned --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant.json \
    > $OUT/quant.log 2>&1
echo "quant 8K,32K rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt
timeout 30 python3 benchmark.py check $OUT/quant.json > $OUT/checks.log 2>&1
cat $OUT/gpu.txt; grep "^\[" $OUT/quant.log | cut -c1-170; sed -n "/^3\./,/^5\./p" $OUT/checks.log | cut -c1-170
