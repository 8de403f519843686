#!/bin/bash
# One call, whichever card comes: on an H200, issue 23's RULER 4K x 50 x 9 methods (as gpu1.sh, 330 s at most: its
# header's answers/s gives the grid's time if it is cut); on an H100, gpu3.sh's diagnostics
name=$(nvidia-smi --query-gpu=name --format=csv,noheader)
if [[ "$name" != *H200* ]]; then exec bash results/h100/session-2026-12-06-b/gpu3.sh; fi  # (the H200 came)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache HF_HUB_OFFLINE=1 KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown}
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
echo "$name" > $OUT/gpu4.txt
timeout 330 python3 test_long_context.py --random-weights --tasks ruler --contexts 4K --samples 50 --methods $M --out /tmp/r.json > $OUT/ruler-4k-50-h200.log 2>&1; echo "rc=$?" >> $OUT/ruler-4k-50-h200.log
python3 -c "import json; d=json.load(open('/tmp/r.json')); print(json.dumps(d['run']['quality'], indent=1)); print(len(d['results']), 'records')" > $OUT/ruler-4k-50-h200-header.json 2>&1
gzip -c /tmp/r.json > $OUT/ruler-4k-50-h200.json.gz
cat $OUT/gpu4.txt; tail -3 $OUT/ruler-4k-50-h200.log; cat $OUT/ruler-4k-50-h200-header.json
