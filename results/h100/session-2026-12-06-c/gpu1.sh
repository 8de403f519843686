#!/bin/bash
# Call 1 (one GPU; gpu.txt says which): issue 23's RULER 4K x 50 x 9 methods on HEAD (the three set-up cuts of
# 1e8a4e4, 7d70b96, 092d96e), the shared prefill's host-positions A/B, then the GPU kernel checks
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache HF_HUB_OFFLINE=1 KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown}
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > $OUT/gpu.txt
t0=$SECONDS
timeout 410 python3 test_long_context.py --random-weights --tasks ruler --contexts 4K --samples 50 --methods $M --out /tmp/r.json > $OUT/ruler-4k-50.log 2>&1
echo "ruler 4K x50 rc=$? $((SECONDS - t0)) s (wall, incl. model build)" >> $OUT/times.txt
python3 -c "import json; d=json.load(open('/tmp/r.json')); print(json.dumps(d['run']['quality'], indent=1)); print(len(d['results']), 'records')" > $OUT/ruler-4k-50-header.json 2>&1
gzip -c /tmp/r.json > $OUT/ruler-4k-50.json.gz
t0=$SECONDS
timeout $((500 - SECONDS)) python3 tools/shared_prefill_ab.py > $OUT/shared-prefill-ab.log 2>&1; echo "rc=$? $((SECONDS - t0)) s" >> $OUT/shared-prefill-ab.log
t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout $((545 - SECONDS)) python3 tests/kernel_check.py gpu; echo "rc=$?"; timeout $((590 - SECONDS)) python3 tests/kernel_check.py dms-gpu; echo "rc=$?") > $OUT/kernel-check.log 2>&1
echo "kernel checks $((SECONDS - t0)) s" >> $OUT/times.txt
cat $OUT/gpu.txt $OUT/times.txt; tail -3 $OUT/ruler-4k-50.log; cat $OUT/ruler-4k-50-header.json; cat $OUT/shared-prefill-ab.log; tail -4 $OUT/kernel-check.log
