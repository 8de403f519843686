#!/bin/bash
# Session n, any GPU (~330 s), after fp8's float16 dots went on and fp8 / int4 / int2 took kernels.wave_splits:
# 1. the GPU kernel checks (the fast engine against hf, with both changes; the DMS kernels), 2. the fp8 and int4
# split curves with the engine's new split count marked, 3. issue 24's 8K decode rows (vanilla, fp8, int4,
# knorm@0.5+fp8 at batch 1 / 8 / 32) and their checks, against callA's rows at a748d34.
# `COMMIT=<sha> bash results/h100/session-2026-12-07-n/callC.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
source tools/device_checks.sh  # sets t0 to its end
for cache in fp8 int; do
    timeout 60 python3 tools/attention_sweep.py --$cache-splits --shapes 1x8192,8x8192,16x8192,32x8192,8x32768 \
        > $OUT/$cache-splits.log 2>&1
    echo "$cache splits rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
done
left=$(( ${DEADLINE:-330} - SECONDS - 25 ))
timeout $left python3 benchmark.py --random-weights --contexts 8K --methods vanilla,fp8,int4,knorm@0.5+fp8 \
    --batch 1,8,32 --admission cloned --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant.json \
    > $OUT/quant.log 2>&1
echo "quant 8K rc=$? $((SECONDS - t0)) s (limit $left s)" >> $OUT/gpu.txt
timeout 20 python3 benchmark.py check $OUT/quant.json > $OUT/checks.log 2>&1
cat $OUT/gpu.txt; tail -n 1 $OUT/kernel-check-gpu.log $OUT/kernel-check-dms-gpu.log | cut -c1-200
grep -A1 "engine splits" $OUT/fp8-splits.log $OUT/int-splits.log | cut -c1-300
sed -n "/^3\./,/^5\./p" $OUT/checks.log | cut -c1-170
