#!/bin/bash
# issue 24 / 23, call 3 (one GPU, gpu3.txt says which): the decode attention's launch parameters over fp8 and bf16
# caches at 8K (tools/attention_sweep.py), then a short RULER 4K run whose header splits the decode's time
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache HF_HUB_OFFLINE=1 KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown}
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/gpu3.txt
timeout 120 python3 tools/attention_sweep.py --fp8 --shapes 8x8192,32x8192,1x8192 > $OUT/sweep-fp8.log 2>&1; echo "rc=$?" >> $OUT/sweep-fp8.log
timeout 80 python3 tools/attention_sweep.py --shapes 8x8192,32x8192 > $OUT/sweep-bf16.log 2>&1; echo "rc=$?" >> $OUT/sweep-bf16.log
timeout 150 python3 test_long_context.py --random-weights --tasks ruler --contexts 4K --samples 8 --methods $M --out /tmp/r.json > $OUT/ruler-4k-8.log 2>&1; echo "rc=$?" >> $OUT/ruler-4k-8.log
python3 -c "import json; print(json.dumps(json.load(open('/tmp/r.json'))['run']['quality'], indent=1))" > $OUT/ruler-4k-8-header.json 2>&1
cat $OUT/gpu3.txt; grep -v skip $OUT/sweep-fp8.log | head -32; grep -v skip $OUT/sweep-bf16.log | head -16; tail -3 $OUT/ruler-4k-8.log; cat $OUT/ruler-4k-8-header.json
