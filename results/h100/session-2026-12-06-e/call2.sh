#!/bin/bash
# Call 2 (issue 24): capacity at a memory budget, 8K and 32K, for vanilla, fp8, int4, knorm@0.5+fp8, dms-8x and
# dms-8x+fp8 (Qwen3-8B architecture, random bf16 weights). The budget is 80 GiB on a GPU that holds it; an H100 holds
# 79.2 GiB, so there the allocator is capped at 72 GiB (the figures are then at 72 GiB, and said so).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache HF_HUB_OFFLINE=1 KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > $OUT/gpu2.txt
total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
budget=$([ "$total" -gt 100000 ] && echo 80GiB || echo 72GiB)
echo "budget $budget" >> $OUT/gpu2.txt
resume=$([ -f results/partial/capacity.json ] && echo "--resume" || echo "")
[ -f results/partial/capacity.json ] && cp results/partial/capacity.json $OUT/capacity.json
t0=$SECONDS
timeout 555 python3 benchmark.py capacity --random-weights --budget $budget --contexts 8K,32K \
    --methods vanilla,fp8,int4,knorm@0.5+fp8,dms-8x,dms-8x+fp8 --out $OUT/capacity.json $resume > $OUT/capacity.log 2>&1
echo "capacity rc=$? $((SECONDS - t0)) s" >> $OUT/gpu2.txt
cat $OUT/gpu2.txt; grep -v "^  batch\|^  context" $OUT/capacity.log | tail -32 | cut -c1-200
