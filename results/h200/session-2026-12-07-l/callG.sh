#!/bin/bash
# Session l, the last of its device time (LIMIT seconds for the whole call): on an H200, RULER 4K x 50 x 9 alone
# (issue 23's 5-minute target; a run cut by the limit saves its file and header on SIGTERM: its answers/s still
# count); on an H100, callE.sh (the GPU kernel checks and the int launch sweep).
# `LIMIT=<s> COMMIT=<sha> bash results/h200/session-2026-12-07-l/callG.sh`, carry [".whl", ".carry"].
if ! nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
    exec bash results/h200/session-2026-12-07-l/callE.sh
fi
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
left=$(( ${LIMIT:-560} - SECONDS - 25 ))
t0=$SECONDS
timeout $left python3 test_long_context.py --random-weights --tasks ruler --contexts 4K --samples 50 --methods $M \
    --out $OUT/ruler-4k.json > $OUT/ruler-4k.log 2>&1
echo "ruler 4K rc=$? $((SECONDS - t0)) s (limit $left s)" >> $OUT/gpu.txt
python3 -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))['run']['quality'], indent=1))" \
    $OUT/ruler-4k.json > $OUT/ruler-4k-header.json 2>&1; gzip $OUT/ruler-4k.json
cat $OUT/gpu.txt $OUT/ruler-4k-header.json; tail -3 $OUT/ruler-4k.log | cut -c1-200
