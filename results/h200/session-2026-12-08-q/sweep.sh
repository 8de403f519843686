#!/bin/bash
# Session q, any GPU (~150 s; on an H200 right after callA.sh, the machine warm): session p's sweep.sh with batch 1
# added, where session q's ring="own" should count most (a program's 2-4 code trips no longer wait for the ring's).
# The int sweep's launches include session p's word_codes / interleave_groups and session q's ring="first" / "own"
# (int_kernels.AttentionLaunch), none timed yet. A candidate faster than the engine's launch at every shape, its max
# diff vs the engine's at float32 rounding (ring "first" and words alone: 0), becomes int_kernels.LAUNCH; then
# kernel_check gpu on it. `COMMIT=<sha> bash results/h200/session-2026-12-08-q/sweep.sh`, carry [".whl", ".carry"].
[ -n "$PYTHONPATH" ] || source tools/device_setup.sh
export PYTHONUNBUFFERED=1
t0=$SECONDS
timeout 240 python3 tools/attention_sweep.py --int --shapes 1x8192,8x8192,32x8192,8x32768 > $OUT/int-sweep.log 2>&1
echo "int sweep rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt
cat $OUT/gpu.txt; tail -n 1 $OUT/kernel-check-*.log 2>/dev/null | cut -c1-200
grep -B1 -A12 "^int4" $OUT/int-sweep.log | cut -c1-240
