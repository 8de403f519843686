#!/bin/bash
# Session l, whichever GPU comes (no kind named): on an H200, session j's nextA.sh (issue 23: RULER 4K x 50 x 9 and
# the quality/measured A/B); on an H100, callE.sh (the GPU kernel checks and the int launch sweep).
# `COMMIT=<sha> bash results/h200/session-2026-12-07-l/callF.sh`, carry [".whl", ".carry"].
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    exec bash results/h100/session-2026-12-07-j/nextA.sh
fi
exec bash results/h200/session-2026-12-07-l/callE.sh
