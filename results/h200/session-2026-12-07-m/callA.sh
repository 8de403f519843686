#!/bin/bash
# Session m, first call, whichever GPU comes (kind nvidia-h200 without needs_h200): on an H200, session j's nextA.sh
# (issue 23: RULER 4K x 50 x 9, then the quality/measured A/B); on an H100, session l's callC.sh (the GPU kernel
# checks on the launch that splits nibbles, then the 8K/32K decode table of issue 24).
# `COMMIT=<sha> bash results/h200/session-2026-12-07-m/callA.sh`, carry [".whl", ".carry"].
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    exec bash results/h100/session-2026-12-07-j/nextA.sh
fi
exec bash results/h200/session-2026-12-07-l/callC.sh
