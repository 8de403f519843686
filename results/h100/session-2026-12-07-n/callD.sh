#!/bin/bash
# Session n, any GPU (~230 s): issue 24's 32K decode rows (vanilla, fp8, int4, knorm@0.5+fp8 at batch 1 and 8; at
# batch 32 vanilla and fp8 do not fit an H100) after fp8's float16 dots and the wave split counts (f563828), against
# session k's (results/h100/session-2026-12-07-k/). A run cut by its limit keeps its finished cells.
# `COMMIT=<sha> bash results/h100/session-2026-12-07-n/callD.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
t0=$SECONDS
left=$(( ${DEADLINE:-230} - SECONDS - 20 ))
timeout $left python3 benchmark.py --random-weights --contexts 32K --methods vanilla,fp8,int4,knorm@0.5+fp8 \
    --batch 1,8 --admission cloned --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant-32k.json \
    > $OUT/quant-32k.log 2>&1
echo "quant 32K rc=$? $((SECONDS - t0)) s (limit $left s)" >> $OUT/gpu.txt
timeout 15 python3 benchmark.py check $OUT/quant-32k.json > $OUT/checks-32k.log 2>&1
cat $OUT/gpu.txt; grep "^\[" $OUT/quant-32k.log | cut -c1-170; sed -n "/^3\./,/^5\./p" $OUT/checks-32k.log | cut -c1-170
