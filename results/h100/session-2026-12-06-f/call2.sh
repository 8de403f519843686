#!/bin/bash
# Session f, call 2: capacity at 80 GiB (72 GiB on an H100), 8K and 32K, with fp8 and int4 codes now staged for
# decode (session e measured fp8 at 81 of 111 predicted before the staging) and the compositions (issue 24's targets:
# fp8 >= 1.9x vanilla's batch, int4 >= 3x, knorm@0.5+fp8 >= 3.8x, dms-8x+fp8 beside dms-8x; each within 10 % of
# its prediction). Then its check.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache HF_HUB_OFFLINE=1 KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > $OUT/gpu.txt
total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
budget=$([ "$total" -gt 100000 ] && echo 80GiB || echo 72GiB)
echo "capacity budget $budget" >> $OUT/times.txt; t0=$SECONDS
timeout $((570 - SECONDS)) python3 benchmark.py capacity --random-weights --budget $budget --contexts 8K,32K \
    --methods vanilla,fp8,int4,knorm@0.5+fp8,dms-8x,dms-8x+fp8 --out $OUT/capacity.json > $OUT/capacity.log 2>&1
echo "capacity rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt
timeout 20 python3 benchmark.py check $OUT/capacity.json > $OUT/capacity-check.log 2>&1
cat $OUT/gpu.txt $OUT/times.txt; grep -v "^  batch\|^  context\|^memory" $OUT/capacity.log | tail -30 | cut -c1-200
grep -i "capacity\|fail" $OUT/capacity-check.log | head -20 | cut -c1-200
