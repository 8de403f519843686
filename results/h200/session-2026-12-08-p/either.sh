#!/bin/bash
# Session p, whichever GPU comes (kind nvidia-h200 without needs_h200): on an H200 session o's callA.sh (the kernel
# checks, issue 23's RULER 4K and A/B); on an H100 the kernel checks, the quality batch's GPU check, and the int
# launch sweep with session p's two candidates (word_codes, interleave_groups: 10 % fewer instructions on a CPU count,
# never timed). `COMMIT=<sha> bash results/h200/session-2026-12-08-p/either.sh`, carry [".whl", ".carry"].
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    exec bash results/h200/session-2026-12-07-o/callA.sh
fi
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
source tools/device_checks.sh  # sets t0 to its end
timeout 120 python3 tests/kernel_check.py quality-gpu > $OUT/kernel-check-quality-gpu.log 2>&1
echo "kernel check quality-gpu rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
bash ${SWEEP:-results/h200/session-2026-12-08-p/sweep.sh}  # SWEEP=results/h200/session-2026-12-08-q/sweep.sh: batch 1 too
