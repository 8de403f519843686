#!/bin/bash
# For the next session's H200 (~560 s), on main: issue 24's capacity at 80 GiB, 8K (vanilla, fp8, int4,
# knorm@0.5+fp8, dms-8x, dms-8x+fp8); 32K in a later call (`CONTEXTS=32K`).
# `COMMIT=<sha> bash results/h100/session-2026-12-07-j/nextC.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
t0=$SECONDS
timeout 530 python3 benchmark.py capacity --random-weights --budget 80GiB --contexts ${CONTEXTS:-8K} \
    --methods vanilla,fp8,int4,knorm@0.5+fp8,dms-8x,dms-8x+fp8 --out $OUT/capacity.json > $OUT/capacity.log 2>&1
echo "capacity ${CONTEXTS:-8K} rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt
cat $OUT/gpu.txt; grep -v "^memory" $OUT/capacity.log | tail -n 40 | cut -c1-220
