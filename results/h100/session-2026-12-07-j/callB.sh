#!/bin/bash
# Session j, call B (~500 s), after callA.sh (same tree): the int kernel's launch choices (block, warps, whole
# key groups a block, bit planes), then session i's callC.sh: int4's and dms-8x+fp8's capacity at 8K with the
# allocator as it is and with expandable segments (where int4's missing 13 sequences of session f go).
# `COMMIT=<label> bash results/h100/session-2026-12-07-j/callB.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
t0=$SECONDS
timeout 80 python3 tools/attention_sweep.py --int --shapes 8x8192,32x8192 > $OUT/sweeps.log 2>&1
echo "int sweep rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt
total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
budget=$([ "$total" -gt 100000 ] && echo 80GiB || echo 72GiB)
for alloc in default expandable; do
    t0=$SECONDS; share=$([ $alloc = default ] && echo 2 || echo 1); left=$(( (${DEADLINE:-585} - SECONDS) / share ))
    conf=$([ $alloc = expandable ] && echo expandable_segments:True)
    PYTORCH_CUDA_ALLOC_CONF=$conf timeout $left python3 benchmark.py capacity --random-weights --budget $budget \
        --contexts 8K --methods int4,dms-8x+fp8 --out $OUT/capacity-$alloc.json > $OUT/capacity-$alloc.log 2>&1
    echo "capacity $alloc ($budget) rc=$? $((SECONDS - t0)) s (limit $left s)" >> $OUT/gpu.txt
done
cat $OUT/gpu.txt; grep -A6 "^int" $OUT/sweeps.log | cut -c1-150
for alloc in default expandable; do echo "== $alloc"; grep -v "^memory" $OUT/capacity-$alloc.log | tail -n 16 \
    | cut -c1-240; done
