#!/bin/bash
# Session h, call B (~580 s), the same working tree as call A (callA.sh's header): the 8K decode table (vanilla /
# fp8 / int4 / knorm@0.5+fp8 at batch 1 / 8 / 32) and its check, then RULER 32K x 20 (issue 23) for what is left,
# resumed from .carry/r32.tgz when an earlier call left one (copy the r32.tgz a call brought back there); its file
# comes back for the next call to resume.
# `COMMIT=<label> bash results/h200/session-2026-12-07-h/callB.sh`, carry [".whl", ".carry"].
source tools/device_setup.sh
export PYTHONUNBUFFERED=1
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
header() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(json.dumps(d['run']['quality'], indent=1)); print(len(d['results']), 'records')" "$1"; }
t0=$SECONDS
timeout 200 python3 benchmark.py --random-weights --contexts 8K \
    --methods ${METHODS:-vanilla,fp8,int4,knorm@0.5+fp8} --batch ${BATCHES:-1,8,32} --admission cloned \
    --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant.json > $OUT/quant.log 2>&1
echo "quant 8K rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
timeout 20 python3 benchmark.py check $OUT/quant.json > $OUT/checks.log 2>&1
[ -f .carry/r32.tgz ] && tar xzf .carry/r32.tgz -C /tmp && resume=--resume
left=$((585 - SECONDS))
[ $left -gt 40 ] && timeout $left python3 test_long_context.py --random-weights --tasks ruler --contexts 32K \
    --samples 20 --methods $M --out /tmp/r32.json $resume > $OUT/ruler-32k.log 2>&1
echo "ruler 32K rc=$? $((SECONDS - t0)) s (left $left s, $resume)" >> $OUT/gpu.txt
header /tmp/r32.json > $OUT/ruler-32k-header.json 2>&1; (cd /tmp && tar czf $OUT/r32.tgz r32*)
cat $OUT/gpu.txt; grep "^\[" $OUT/quant.log | cut -c1-170; sed -n "/^3\./,/^4\./p" $OUT/checks.log | cut -c1-170
tail -2 $OUT/ruler-32k.log | cut -c1-200; cat $OUT/ruler-32k-header.json
