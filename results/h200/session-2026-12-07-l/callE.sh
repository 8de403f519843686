#!/bin/bash
# Session l, any GPU (~200 s; an H100 serves): the GPU kernel checks on the current int/attention kernels (first since
# 2fdf5ea), then session k's int launch sweep (nextE.sh: codes_by_exponent and split_nibbles against the engine's
# launch, one layer at 8K x 8 / 32, 32K x 8).
# `COMMIT=<sha> bash results/h200/session-2026-12-07-l/callE.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
source tools/device_checks.sh  # sets t0 to its end
timeout 240 python3 tools/attention_sweep.py --int --shapes 8x8192,32x8192,8x32768 > $OUT/int-sweep.log 2>&1
echo "int sweep rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt
cat $OUT/gpu.txt; tail -n 1 $OUT/kernel-check-gpu.log $OUT/kernel-check-dms-gpu.log | cut -c1-200; cut -c1-170 $OUT/int-sweep.log
