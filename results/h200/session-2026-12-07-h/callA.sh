#!/bin/bash
# Session h, call A (~580 s), for the next session (no machine came in session h). Working tree: the two patches of
# this folder applied (`git am results/h200/session-2026-12-07-h/000*.patch`: the attention kernels take their
# split's length as an argument; their shared prologue / softmax / store helpers) and, to time the bit-plane int
# kernel, int_kernels.LAUNCH = AttentionLaunch(block=32, planes=True) uncommitted. It runs, in the order a short
# lease needs them: the GPU check of the fast engine (whether the patches land), the int kernel's launch choices
# (planes at blocks 16-64 against block 64 without planes), then issue 23's RULER 4K grid (11 tasks x 50 samples x
# 9 methods = 4,950 answers; target 5 min on an H200), whole unless DEADLINE (s, default 585: a shorter lease)
# cuts it. `COMMIT=<label> bash results/h200/session-2026-12-07-h/callA.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
header() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(json.dumps(d['run']['quality'], indent=1)); print(len(d['results']), 'records')" "$1"; }
t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 90 python3 tests/kernel_check.py gpu; echo "rc=$?") > $OUT/kernel-check.log 2>&1
echo "kernel check gpu $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
timeout 80 python3 tools/attention_sweep.py --int --shapes 8x8192,32x8192 > $OUT/sweeps.log 2>&1
echo "int sweep rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
r4=$(( ${DEADLINE:-585} - SECONDS - 20 )); [ $r4 -gt 430 ] && r4=430
[ $r4 -gt 40 ] && timeout $r4 python3 test_long_context.py --random-weights --tasks ruler --contexts 4K \
    --samples 50 --methods $M --out /tmp/r4.json > $OUT/ruler-4k.log 2>&1
echo "ruler 4K rc=$? $((SECONDS - t0)) s (limit $r4 s)" >> $OUT/gpu.txt
header /tmp/r4.json > $OUT/ruler-4k-header.json 2>&1; gzip -c /tmp/r4.json > $OUT/ruler-4k.json.gz
cat $OUT/gpu.txt; grep -v "rel err" $OUT/kernel-check.log | tail -3 | cut -c1-200
grep -A6 "^int" $OUT/sweeps.log | cut -c1-150; tail -2 $OUT/ruler-4k.log | cut -c1-200; cat $OUT/ruler-4k-header.json
