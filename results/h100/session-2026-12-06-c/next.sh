#!/bin/bash
# Ready for the next session, NOT RUN: what this session changed after its last GPU call (4f57094 inference mode +
# handed layers, a8d33cc the 0.7 share, 6c1b8ae the per-layer load, 8bde163 quantized methods in the shared prefill),
# checked and timed in one call (~560 s): 1. the GPU path checks (the load and the compact cache's code changed); 2. the feed against single steps
# on one batch; 3. a short RULER run with fp8 methods; 4. RULER 4K x 50 x 9 (cut by its timeout: the rate is the figure).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache HF_HUB_OFFLINE=1 KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown}
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/gpu.txt
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 60 python3 tests/kernel_check.py gpu; echo "rc=$?"; timeout 50 python3 tests/kernel_check.py quality-gpu; echo "rc=$?"; timeout 60 python3 tests/kernel_check.py dms-gpu; echo "rc=$?") > $OUT/kernel-check.log 2>&1
timeout 60 python3 tools/forced_feed_ab.py --rows 68 --context 2048 --question 40 --budget 8 > $OUT/forced-feed-ab.log 2>&1; echo "rc=$?" >> $OUT/forced-feed-ab.log
timeout 90 python3 test_long_context.py --random-weights --tasks ruler --contexts 4K --samples 5 --methods vanilla,fp8,knorm@0.5,knorm@0.5+fp8 --out /tmp/q8.json > $OUT/ruler-4k-fp8.log 2>&1; echo "rc=$?" >> $OUT/ruler-4k-fp8.log  # 8bde163: quantized methods in the shared prefill
t0=$SECONDS
timeout $((550 - SECONDS)) python3 test_long_context.py --random-weights --tasks ruler --contexts 4K --samples 50 --methods $M --out /tmp/r.json > $OUT/ruler-4k-50.log 2>&1
echo "ruler 4K x50 rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt
python3 -c "import json; d=json.load(open('/tmp/r.json')); print(json.dumps(d['run']['quality'], indent=1)); print(len(d['results']), 'records')" > $OUT/ruler-4k-50-header.json 2>&1
gzip -c /tmp/r.json > $OUT/ruler-4k-50.json.gz
cat $OUT/gpu.txt $OUT/times.txt; grep -v "rel err" $OUT/kernel-check.log | tail -8; tail -2 $OUT/forced-feed-ab.log; tail -3 $OUT/ruler-4k-fp8.log; cat $OUT/ruler-4k-50-header.json
