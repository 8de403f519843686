#!/bin/bash
# Session m, an H200 only (`needs_h200`: the 80 GiB budget does not fit an H100), DEADLINE seconds for the whole call:
# issue 24's capacity at 80 GiB, 8K, for vanilla, fp8, int4, knorm@0.5+fp8, dms-8x, dms-8x+fp8 (session j's nextC.sh
# with its limit the time given; a run cut by it keeps every finished cell: SIGTERM saves the file).
# `DEADLINE=<s> COMMIT=<sha> bash results/h200/session-2026-12-07-m/callC.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
t0=$SECONDS
left=$(( ${DEADLINE:-560} - SECONDS - 20 ))
timeout $left python3 benchmark.py capacity --random-weights --budget 80GiB --contexts ${CONTEXTS:-8K} \
    --methods vanilla,fp8,int4,knorm@0.5+fp8,dms-8x,dms-8x+fp8 --out $OUT/capacity.json > $OUT/capacity.log 2>&1
echo "capacity ${CONTEXTS:-8K} rc=$? $((SECONDS - t0)) s (limit $left s)" >> $OUT/gpu.txt
cat $OUT/gpu.txt; grep -v "^memory" $OUT/capacity.log | tail -n 40 | cut -c1-220
