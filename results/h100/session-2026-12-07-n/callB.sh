#!/bin/bash
# Session n, any GPU (~200 s): two launch questions, one layer each. 1. int4's decode attention (the engine's launch)
# at every split count: does the time follow waves of programs (callA's sweep: 8 programs an SM beat 4 at batch 8,
# lost at batch 32)? 2. the fp8 kernel with its dots in float16 (F16_DOTS: 716 instead of 869 SASS instructions a
# trip, tools/sass_count.py) against the engine's launch, at 8K x 8 and x 32.
# `COMMIT=<sha> bash results/h100/session-2026-12-07-n/callB.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
t0=$SECONDS
timeout 150 python3 tools/attention_sweep.py --int-splits --shapes 1x8192,8x8192,16x8192,32x8192,8x32768 \
    > $OUT/int-splits.log 2>&1
echo "int splits rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
timeout 150 python3 tools/attention_sweep.py --fp8 --shapes 8x8192,32x8192,8x32768 > $OUT/fp8-sweep.log 2>&1
echo "fp8 sweep rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt
cat $OUT/gpu.txt $OUT/int-splits.log | cut -c1-400; cat $OUT/fp8-sweep.log | cut -c1-200
