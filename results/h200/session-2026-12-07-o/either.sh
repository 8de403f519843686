#!/bin/bash
# Session o, whichever GPU comes (kind nvidia-h200 without needs_h200): on an H200 callA.sh (kernel checks, issue 23's
# RULER 4K and A/B), on an H100 the kernel checks and the quality batch's GPU check (RULER 4K has run on H100s:
# sessions j and k). `COMMIT=<sha> bash results/h200/session-2026-12-07-o/either.sh`, carry [".whl", ".carry"].
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    exec bash results/h200/session-2026-12-07-o/callA.sh
fi
source tools/device_setup.sh
source tools/device_checks.sh
timeout 120 python3 tests/kernel_check.py quality-gpu > $OUT/kernel-check-quality-gpu.log 2>&1
echo "kernel check quality-gpu rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt
cat $OUT/gpu.txt; tail -n 1 $OUT/kernel-check-*.log | cut -c1-200
