#!/bin/bash
# Session n, whichever GPU comes (kind nvidia-h200 without needs_h200): on an H200 session j's nextA.sh (issue 23:
# RULER 4K x 50 x 9, then the quality/measured A/B), on an H100 this session's callB.sh (int split curve, fp8 sweep).
# `COMMIT=<sha> bash results/h100/session-2026-12-07-n/either.sh`, carry [".whl", ".carry"].
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    exec bash results/h100/session-2026-12-07-j/nextA.sh
fi
exec bash results/h100/session-2026-12-07-n/callB.sh
