#!/bin/bash
# Session j, call D (~60 s), the same tree as callC: native DMS's GPU check (the shared k/v store touched its store).
# `bash results/h100/session-2026-12-07-j/callD.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh; export PYTHONUNBUFFERED=1
(timeout 120 python3 tests/kernel_check.py dms-gpu; echo "rc=$?") > $OUT/dms-kernel-check.log 2>&1
