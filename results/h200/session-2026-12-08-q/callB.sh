#!/bin/bash
# Session q, an H200 right after session o's callA.sh (warm; its checks passed on this commit): issue 23's A/B
# (quality mode against the measured path on one subset, >= 15x) whole, then this session's int launch sweep
# (sweep.sh). `COMMIT=<sha> bash results/h200/session-2026-12-08-q/callB.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
t0=$SECONDS
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
timeout 300 python3 tools/quality_ab.py --out-dir $OUT/ab-4k -- --random-weights \
    --tasks niah_single_1,niah_multikey_2,ruler_vt --contexts 4K --samples 2 --methods $M > $OUT/ab-4k.log 2>&1
echo "A/B rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt
tail -6 $OUT/ab-4k.log | cut -c1-220
left=$(( 585 - SECONDS )); [ $left -gt 240 ] && left=240
[ $left -gt 60 ] && timeout $left python3 tools/attention_sweep.py --int --shapes 1x8192,8x8192,32x8192,8x32768 \
    > $OUT/int-sweep.log 2>&1
echo "int sweep rc=$? $((SECONDS - t0)) s (limit $left s)" >> $OUT/gpu.txt
cat $OUT/gpu.txt; grep -B1 -A12 "^int4" $OUT/int-sweep.log | cut -c1-240
