#!/bin/bash
# Session g, call 1 (~560 s): the GPU check of the fast engine (int4 / int2 now through the bit-plane attention
# kernel, int_kernels.AttentionLaunch.planes, the engine's launch), the int kernel's launch choices timed (planes at
# blocks 16-64, group_keys, block 64 without planes: the H100's best before), the decode table at 8K (batch 1 / 8 /
# 32), the ragged fp8 kernel with and without folded scales, then 32K (batch 1 / 8) as the call allows, and the
# checks. Eight files come back at most: times and the GPU's limits in gpu.txt, both sweeps in sweeps.log, both
# checks in checks.log. `COMMIT=<sha> bash results/h100/session-2026-12-07-g/call1.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 90 python3 tests/kernel_check.py gpu; echo "rc=$?") > $OUT/kernel-check.log 2>&1
echo "kernel check gpu $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
timeout 150 python3 tools/attention_sweep.py --int --shapes 8x8192,32x8192 > $OUT/sweeps.log 2>&1
echo "int sweep rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
timeout 260 python3 benchmark.py --random-weights --contexts 8K \
    --methods vanilla,fp8,int4,knorm@0.5+fp8 --batch 1,8,32 --admission cloned \
    --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant.json > $OUT/quant.log 2>&1
echo "quant 8K rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
timeout 60 python3 tools/attention_sweep.py --fp8 --ragged-only >> $OUT/sweeps.log 2>&1
echo "ragged fp8 sweep rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
timeout $((560 - SECONDS)) python3 benchmark.py --random-weights --contexts 32K \
    --methods vanilla,fp8,int4,knorm@0.5+fp8 --batch 1,8 --admission cloned \
    --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant-32k.json > $OUT/quant-32k.log 2>&1
echo "quant 32K rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt
(timeout 20 python3 benchmark.py check $OUT/quant.json; timeout 20 python3 benchmark.py check $OUT/quant-32k.json) \
    > $OUT/checks.log 2>&1
cat $OUT/gpu.txt; grep -v "rel err" $OUT/kernel-check.log | tail -3 | cut -c1-200
grep -A5 "^int" $OUT/sweeps.log | cut -c1-150; grep "^ragged" $OUT/sweeps.log | cut -c1-150
grep "^\[" $OUT/quant.log $OUT/quant-32k.log | cut -c1-170; sed -n "/^3\./,/^4\./p" $OUT/checks.log | cut -c1-170
