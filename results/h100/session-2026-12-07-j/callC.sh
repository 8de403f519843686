#!/bin/bash
# Session j, call C (~120 s): callA's tree with int_kernels.LAUNCH = AttentionLaunch(group_keys=True), callB's
# sweep winner: the GPU check, then int4's decode rows at 8K beside vanilla's.
# `bash results/h100/session-2026-12-07-j/callC.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh; export PYTHONUNBUFFERED=1
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 70 python3 tests/kernel_check.py gpu; echo "rc=$?") > $OUT/kernel-check-gk.log 2>&1
timeout 150 python3 benchmark.py --random-weights --contexts 8K --methods vanilla,int4 --batch 1,8,32 \
    --admission cloned --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant-gk.json > $OUT/quant-gk.log 2>&1
timeout 20 python3 benchmark.py check $OUT/quant-gk.json > $OUT/checks-gk.log 2>&1
