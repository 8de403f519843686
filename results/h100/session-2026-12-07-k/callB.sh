#!/bin/bash
# Session k's call B on the warm H100 (as sent, one line): issue 23's quality / measured A/B alone, with the time
# call A's 140 s left it did not have. `COMMIT=<sha> bash results/h100/session-2026-12-07-k/callB.sh`,
# carry [".whl", ".carry"].
source tools/device_setup.sh; export PYTHONUNBUFFERED=1
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
t0=$SECONDS
timeout 420 python3 tools/quality_ab.py --out-dir $OUT/ab-4k -- --random-weights --tasks niah_single_1,niah_multikey_2,ruler_vt \
    --contexts 4K --samples 2 --methods $M > $OUT/ab-4k.log 2>&1
echo "A/B rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; cat $OUT/gpu.txt; tail -25 $OUT/ab-4k.log | cut -c1-220
