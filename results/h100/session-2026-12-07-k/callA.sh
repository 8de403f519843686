#!/bin/bash
# For the next session's H200 (~560 s), on main: issue 23's targets. 1. RULER 4K x 50 samples x 9 methods whole
# (target <= 5 min; an H100 took 325 s at 15.2 answers/s in session j), 2. quality mode against the measured path on
# one subset in the same process (target >= 15x), for the time left.
# `COMMIT=<sha> bash results/h100/session-2026-12-07-j/nextA.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
t0=$SECONDS
timeout 400 python3 test_long_context.py --random-weights --tasks ruler --contexts 4K --samples 50 --methods $M \
    --out $OUT/ruler-4k.json > $OUT/ruler-4k.log 2>&1
echo "ruler 4K rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
python3 -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))['run']['quality'], indent=1))" \
    $OUT/ruler-4k.json > $OUT/ruler-4k-header.json 2>&1; gzip $OUT/ruler-4k.json
left=$(( ${DEADLINE:-560} - SECONDS - 10 ))
[ $left -gt 60 ] && timeout $left python3 tools/quality_ab.py --out-dir $OUT/ab-4k -- --random-weights \
    --tasks niah_single_1,niah_multikey_2,ruler_vt --contexts 4K --samples 2 --methods $M > $OUT/ab-4k.log 2>&1
echo "A/B rc=$? $((SECONDS - t0)) s (limit $left s)" >> $OUT/gpu.txt
cat $OUT/gpu.txt $OUT/ruler-4k-header.json; tail -4 $OUT/ab-4k.log | cut -c1-200
