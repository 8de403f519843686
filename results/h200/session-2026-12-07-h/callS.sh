#!/bin/bash
# Session h, the short call (a lease of ~300-400 s after failed starts): the same working tree as call A (callA.sh's
# header), its parts in the order a short lease needs them: the GPU check of the fast engine (decides whether the
# kernel changes land), the int kernel's launch choices (planes or not), then RULER 4K x 50 x 9 for what is left
# (its header's answers/s).
# `COMMIT=<label> DEADLINE=<s> bash results/h200/session-2026-12-07-h/callS.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
header() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(json.dumps(d['run']['quality'], indent=1)); print(len(d['results']), 'records')" "$1"; }
t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 90 python3 tests/kernel_check.py gpu; echo "rc=$?") > $OUT/kernel-check.log 2>&1
echo "kernel check gpu $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
timeout 80 python3 tools/attention_sweep.py --int --shapes 8x8192,32x8192 > $OUT/sweeps.log 2>&1
echo "int sweep rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
left=$((${DEADLINE:-300} - SECONDS - 15))
[ $left -gt 40 ] && timeout $left python3 test_long_context.py --random-weights --tasks ruler --contexts 4K \
    --samples 50 --methods $M --out /tmp/r4.json > $OUT/ruler-4k.log 2>&1
echo "ruler 4K rc=$? $((SECONDS - t0)) s (left $left s)" >> $OUT/gpu.txt
header /tmp/r4.json > $OUT/ruler-4k-header.json 2>&1
cat $OUT/gpu.txt; grep -v "rel err" $OUT/kernel-check.log | tail -3 | cut -c1-200
grep -A6 "^int" $OUT/sweeps.log | cut -c1-150; tail -2 $OUT/ruler-4k.log | cut -c1-200; cat $OUT/ruler-4k-header.json
