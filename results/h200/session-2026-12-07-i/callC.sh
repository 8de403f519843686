#!/bin/bash
# Session i, call C (~360 s), for a later session: where int4's and dms-8x+fp8's missing capacity goes. Session f's
# capacity run (results/h100/session-2026-12-06-f/call2/capacity.json, 72 GiB cap on an H100) reached, at each
# method's largest fitting batch, 70.5 GiB allocated for vanilla and 71.1 for fp8 but 67.1 for int4 and 67.4 for
# dms-8x+fp8 at 8K: ~5 GiB of the cap held by the caching allocator and never handed out (int4 fits 135 of the
# 148 its bytes predict). This call runs the two at 8K with the allocator as it is, then with expandable segments
# (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, which maps pages instead of keeping fixed blocks): if the
# fragmentation is the gap, the max batch moves to its prediction. A refused probe records the allocated and
# reserved bytes at the refusal, a probe that fits its allocated and reserved peaks (capacity_probes[], and the
# log's "fits: ... allocated, ... reserved at peak"). Working tree: main as committed.
# `COMMIT=<label> bash results/h200/session-2026-12-07-i/callC.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
budget=$([ "$total" -gt 100000 ] && echo 80GiB || echo 72GiB)
for alloc in default expandable; do
    t0=$SECONDS
    conf=$([ $alloc = expandable ] && echo expandable_segments:True)
    PYTORCH_CUDA_ALLOC_CONF=$conf timeout 170 python3 benchmark.py capacity --random-weights --budget $budget \
        --contexts 8K --methods int4,dms-8x+fp8 --out $OUT/capacity-$alloc.json > $OUT/capacity-$alloc.log 2>&1
    echo "capacity $alloc ($budget) rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt
done
cat $OUT/gpu.txt; for alloc in default expandable; do echo "== $alloc"; grep -v "^memory" $OUT/capacity-$alloc.log \
    | tail -n 24 | cut -c1-240; done
