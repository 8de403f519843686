#!/bin/bash
# For the next GPU (~300 s; an H100 serves too), on main: issue 24's int4 decode. Times int_kernels.AttentionLaunch's
# codes_by_exponent (codes to float32 by their bits, no int-to-float conversion) and split_nibbles (a byte's two int4
# codes by one operation each), alone and together, both the same outputs bit for bit, against the engine's launch,
# one layer at 8K x 8 / 32, 32K x 8. If one wins, set it in int_kernels.LAUNCH, then run session j's callC.sh
# (kernel_check gpu + int4's 8K rows) on that commit.
# `COMMIT=<sha> bash results/h100/session-2026-12-07-k/nextE.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
timeout 300 python3 tools/attention_sweep.py --int --shapes 8x8192,32x8192,8x32768 > $OUT/int-sweep.log 2>&1
echo "int sweep rc=$?" >> $OUT/gpu.txt
cat $OUT/gpu.txt; cut -c1-170 $OUT/int-sweep.log
