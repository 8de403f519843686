#!/bin/bash
# Session m, first call, whichever GPU comes (kind nvidia-h200 without needs_h200): on an H200, session j's nextA.sh
# (issue 23: RULER 4K x 50 x 9, then the quality/measured A/B); on an H100, callB.sh (the GPU kernel
# checks, the int launch sweep, the 8K decode rows of issue 24).
# `COMMIT=<sha> bash results/h200/session-2026-12-07-m/callA.sh`, carry [".whl", ".carry"].
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    exec bash results/h100/session-2026-12-07-j/nextA.sh
fi
exec bash results/h200/session-2026-12-07-m/callB.sh
