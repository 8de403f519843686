#!/bin/bash
# Session n, any GPU (~120 s): int4's decode attention (the engine's launch, one layer) at every split count, to see
# whether the time follows waves of programs (callA's sweep: 8 programs an SM beat 4 at batch 8, lost at batch 32).
# `COMMIT=<sha> bash results/h100/session-2026-12-07-n/callB.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
t0=$SECONDS
timeout 200 python3 tools/attention_sweep.py --int-splits --shapes 1x8192,8x8192,16x8192,32x8192,8x32768 \
    > $OUT/int-splits.log 2>&1
echo "int splits rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt
cat $OUT/gpu.txt $OUT/int-splits.log | cut -c1-400
