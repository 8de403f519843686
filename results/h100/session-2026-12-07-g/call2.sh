#!/bin/bash
# Session g's call 2, for the next session (~570 s): issue 23's RULER grid at 4K (11 tasks x 50 samples x 9 methods = 4,950 answers; target
# 5 minutes on an H200), then the same command at 32K with --samples 20 for what the call has left (its header's
# answers/s and prefill seconds a sample give the whole run's time). Code since the last grid (session d, 13.05
# answers/s on an H100): the result file rewritten every 2 minutes; with chunk-argument.patch applied, the attention
# kernels take the split's length as an argument (no compile per cache length). `COMMIT=<sha> bash results/h100/session-2026-12-07-g/call2.sh`.
source tools/device_setup.sh
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
header() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(json.dumps(d['run']['quality'], indent=1)); print(len(d['results']), 'records')" "$1"; }
t0=$SECONDS
timeout 400 python3 test_long_context.py --random-weights --tasks ruler --contexts 4K --samples 50 --methods $M \
    --out /tmp/r4.json > $OUT/ruler-4k.log 2>&1
echo "ruler 4K rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
header /tmp/r4.json > $OUT/ruler-4k-header.json 2>&1; gzip -c /tmp/r4.json > $OUT/ruler-4k.json.gz
timeout $((575 - SECONDS)) python3 test_long_context.py --random-weights --tasks ruler --contexts 32K --samples 20 \
    --methods $M --out /tmp/r32.json > $OUT/ruler-32k.log 2>&1
echo "ruler 32K rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt
header /tmp/r32.json > $OUT/ruler-32k-header.json 2>&1; gzip -c /tmp/r32.json > $OUT/ruler-32k.json.gz
cat $OUT/gpu.txt; tail -2 $OUT/ruler-4k.log | cut -c1-200; cat $OUT/ruler-4k-header.json; tail -2 $OUT/ruler-32k.log | cut -c1-200
cat $OUT/ruler-32k-header.json
