#!/bin/bash
# Session p, any GPU (~100 s; on an H200 right after callA.sh, the machine warm): the int attention kernel's launch
# sweep at 8K x 8, 8K x 32 and 32K x 8, session p's word_codes and interleave_groups among the launches. A candidate
# faster than the engine's launch at every shape, its max diff vs the engine's at float32 rounding (interleave sums
# in another order; words alone: 0), becomes int_kernels.LAUNCH; then kernel_check gpu on it.
# `COMMIT=<sha> bash results/h200/session-2026-12-08-p/sweep.sh`, carry [".whl", ".carry"].
[ -n "$PYTHONPATH" ] || source tools/device_setup.sh
export PYTHONUNBUFFERED=1
t0=$SECONDS
timeout 150 python3 tools/attention_sweep.py --int --shapes 8x8192,32x8192,8x32768 > $OUT/int-sweep.log 2>&1
echo "int sweep rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt
cat $OUT/gpu.txt; tail -n 1 $OUT/kernel-check-*.log 2>/dev/null | cut -c1-200
grep -B1 -A12 "^int4" $OUT/int-sweep.log | cut -c1-220
