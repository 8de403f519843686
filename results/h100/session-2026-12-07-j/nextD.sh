#!/bin/bash
# For a later H200 call (~560 s each, repeated), on main: issue 23's RULER 32K x 20 samples x 9 methods (1,980
# answers, ~20 min on an H100 with older code), resumed from .carry/r32.tgz when an earlier call left one: copy the
# r32.tgz each call brings back there before the next. The header gives the time (a call cut by its limit saves it
# on SIGTERM; resumed, `total` sums the calls, 9b4aa43 and after) and, with `benchmark.py check`'s FLOP ideal, the
# prefill per sample.
# `COMMIT=<sha> bash results/h100/session-2026-12-07-j/nextD.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
[ -f .carry/r32.tgz ] && tar xzf .carry/r32.tgz -C /tmp && resume=--resume
left=$(( ${DEADLINE:-560} - SECONDS - 15 ))
timeout $left python3 test_long_context.py --random-weights --tasks ruler --contexts 32K --samples 20 --methods $M \
    --out /tmp/r32.json $resume > $OUT/ruler-32k.log 2>&1
echo "ruler 32K rc=$? $((SECONDS)) s (limit $left s, $resume)" >> $OUT/gpu.txt
python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(json.dumps(d['run']['quality'], indent=1)); print(len(d['results']), 'records')" \
    /tmp/r32.json > $OUT/ruler-32k-header.json 2>&1; (cd /tmp && tar czf $OUT/r32.tgz r32*)
cat $OUT/gpu.txt; tail -2 $OUT/ruler-32k.log | cut -c1-200; cat $OUT/ruler-32k-header.json
