#!/bin/bash
# Call 3 (one GPU; gpu3.txt says which): the quality batch check on CUDA (forced part fed at once), RULER 4K x 50 x
# 9 methods with the questions' common part fed in one forward and the layers handed to the presses, the shared
# prefill's profile again; on an H200 with time left, the A/B of issue 23
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache HF_HUB_OFFLINE=1 KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown}
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
name=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$name" > $OUT/gpu3.txt
t0=$SECONDS
timeout 60 python3 tests/kernel_check.py quality-gpu > $OUT/quality-gpu-check.log 2>&1; echo "rc=$? $((SECONDS - t0)) s" >> $OUT/quality-gpu-check.log
t0=$SECONDS
timeout 400 python3 test_long_context.py --random-weights --tasks ruler --contexts 4K --samples 50 --methods $M --out /tmp/r.json > $OUT/ruler-4k-50-b.log 2>&1
echo "ruler 4K x50 rc=$? $((SECONDS - t0)) s (wall, incl. model build)" >> $OUT/times3.txt
python3 -c "import json; d=json.load(open('/tmp/r.json')); print(json.dumps(d['run']['quality'], indent=1)); print(len(d['results']), 'records')" > $OUT/ruler-4k-50-b-header.json 2>&1
gzip -c /tmp/r.json > $OUT/ruler-4k-50-b.json.gz
timeout $((540 - SECONDS)) python3 tools/shared_prefill_profile.py > $OUT/shared-prefill-profile-b.log 2>&1; echo "rc=$?" >> $OUT/shared-prefill-profile-b.log
if [[ "$name" == *H200* ]] && (( SECONDS < 420 )); then
  timeout $((550 - SECONDS)) python3 tools/quality_ab.py --out-dir /tmp/ab -- --random-weights --tasks niah_single_1 --contexts 4K --samples 4 --methods $M > $OUT/ab-4k.log 2>&1; echo "A/B rc=$?" >> $OUT/ab-4k.log
fi
cat $OUT/gpu3.txt $OUT/times3.txt; tail -2 $OUT/quality-gpu-check.log; tail -2 $OUT/ruler-4k-50-b.log; cat $OUT/ruler-4k-50-b-header.json; head -7 $OUT/shared-prefill-profile-b.log | grep -v Warn; tail -3 $OUT/ab-4k.log 2>/dev/null
