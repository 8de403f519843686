#!/bin/bash
# Session o, an H200 (`needs_h200`), ~590 s: the GPU kernel checks (6e3e9bd and 0196f97 have not run on a GPU), then
# issue 23's 4K targets as session j's nextA.sh runs them: RULER 4K x 50 samples x 9 methods whole (<= 5 min), then
# quality mode against the measured path on one subset (>= 15x), for the time left.
# `[DEADLINE=<s>] COMMIT=<sha> bash results/h200/session-2026-12-07-o/callA.sh` (DEADLINE: the whole call, default 585), carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
t0=$SECONDS
[ -z "$SKIP_CHECKS" ] && source tools/device_checks.sh  # sets t0 to its end (SKIP_CHECKS=1: RULER alone)
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
limit=$(( ${DEADLINE:-585} - SECONDS - 15 )); [ $limit -gt 400 ] && limit=400
timeout $limit python3 test_long_context.py --random-weights --tasks ruler --contexts 4K --samples 50 --methods $M \
    --out $OUT/ruler-4k.json > $OUT/ruler-4k.log 2>&1
echo "ruler 4K rc=$? $((SECONDS - t0)) s (limit $limit s)" >> $OUT/gpu.txt; t0=$SECONDS
python3 -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))['run']['quality'], indent=1))" \
    $OUT/ruler-4k.json > $OUT/ruler-4k-header.json 2>&1; gzip $OUT/ruler-4k.json
left=$(( ${DEADLINE:-585} - SECONDS - 10 ))
[ $left -gt 60 ] && timeout $left python3 tools/quality_ab.py --out-dir $OUT/ab-4k -- --random-weights \
    --tasks niah_single_1,niah_multikey_2,ruler_vt --contexts 4K --samples 2 --methods $M > $OUT/ab-4k.log 2>&1
echo "A/B rc=$? $((SECONDS - t0)) s (limit $left s)" >> $OUT/gpu.txt
cat $OUT/gpu.txt; tail -n 1 $OUT/kernel-check-gpu.log $OUT/kernel-check-dms-gpu.log | cut -c1-200
cat $OUT/ruler-4k-header.json | head -40; tail -4 $OUT/ab-4k.log | cut -c1-200
