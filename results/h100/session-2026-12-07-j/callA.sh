#!/bin/bash
# Session j, call A (~585 s): what one short lease must bring back, in order. Working tree: 0764ded with session h's
# two kernel patches and the shared k/v store (commits 8910114, 7d07e4e, f0c7949), int launch block 64, per token.
# 1. the fast engine's GPU check (whether the kernel patches land), 2. issue 24's 8K decode table (vanilla / fp8 /
# int4 / knorm@0.5+fp8 at batch 1 / 8 / 32) and its check, 3. issue 23's RULER 4K grid (11 tasks x 50 samples x 9
# methods) for the time left: its answers per second and phases (header) give the grid's time.
# `COMMIT=<label> bash results/h100/session-2026-12-07-j/callA.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
header() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(json.dumps(d['run']['quality'], indent=1)); print(len(d['results']), 'records')" "$1"; }
t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 90 python3 tests/kernel_check.py gpu; echo "rc=$?") > $OUT/kernel-check.log 2>&1
echo "kernel check gpu $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
timeout 200 python3 benchmark.py --random-weights --contexts 8K --methods vanilla,fp8,int4,knorm@0.5+fp8 \
    --batch 1,8,32 --admission cloned --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant.json \
    > $OUT/quant.log 2>&1
echo "quant 8K rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt
timeout 20 python3 benchmark.py check $OUT/quant.json > $OUT/checks.log 2>&1; t0=$SECONDS
r4=$(( ${DEADLINE:-585} - SECONDS - 15 ))
[ $r4 -gt 40 ] && timeout $r4 python3 test_long_context.py --random-weights --tasks ruler --contexts 4K \
    --samples 50 --methods $M --out /tmp/r4.json > $OUT/ruler-4k.log 2>&1
echo "ruler 4K rc=$? $((SECONDS - t0)) s (limit $r4 s)" >> $OUT/gpu.txt
header /tmp/r4.json > $OUT/ruler-4k-header.json 2>&1; gzip -c /tmp/r4.json > $OUT/ruler-4k.json.gz
cat $OUT/gpu.txt; grep -v "rel err" $OUT/kernel-check.log | tail -3 | cut -c1-200
grep "^\[" $OUT/quant.log | cut -c1-170; sed -n "/^3\./,/^4\./p" $OUT/checks.log | cut -c1-170
tail -2 $OUT/ruler-4k.log | cut -c1-200; cat $OUT/ruler-4k-header.json
