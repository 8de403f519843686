#!/bin/bash
# Session g's call 1, for the next session (no machine came in session g; ~565 s, whichever card comes). Run it with
# chunk-argument.patch applied to the working tree (`git apply results/h100/session-2026-12-07-g/chunk-argument.patch`:
# every attention kernel takes its split's length as an argument instead of a constexpr) and, to time the engine
# with the bit-plane int kernel, int_kernels.LAUNCH = AttentionLaunch(block=32, planes=True). It runs the GPU check of
# the fast engine, the int kernel's launch choices (planes at blocks 16-64, group_keys, block 64 without planes: the
# H100's best before), the decode table at 8K (batch 1 / 8 / 32; vanilla and fp8 against session f's H100 figures:
# the patch must not slow them) and its check, then RULER 4K x 50 x 9 methods for what the call has left (its
# header's answers/s gives the grid's time). Eight files come back at most.
# `COMMIT=<sha> DEADLINE=<s> bash results/h100/session-2026-12-07-g/call1.sh`, carry [".whl", ".carry"]. On a short
# lease: DEADLINE (default 565 s) ends the RULER run (none under a minute left), BATCHES (default 1,8,32) and METHODS
# (default vanilla,fp8,int4,knorm@0.5+fp8) the table's; e.g. DEADLINE=300 BATCHES=8,32 METHODS=vanilla,fp8,int4.
source tools/device_setup.sh
t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 90 python3 tests/kernel_check.py gpu; echo "rc=$?") > $OUT/kernel-check.log 2>&1
echo "kernel check gpu $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
timeout 90 python3 tools/attention_sweep.py --int --shapes 8x8192,32x8192 > $OUT/sweeps.log 2>&1
echo "int sweep rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
timeout 200 python3 benchmark.py --random-weights --contexts 8K \
    --methods ${METHODS:-vanilla,fp8,int4,knorm@0.5+fp8} --batch ${BATCHES:-1,8,32} --admission cloned \
    --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant.json > $OUT/quant.log 2>&1
echo "quant 8K rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
timeout 20 python3 benchmark.py check $OUT/quant.json > $OUT/checks.log 2>&1
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
left=$((${DEADLINE:-565} - SECONDS))
[ $left -gt 60 ] && timeout $left python3 test_long_context.py --random-weights --tasks ruler --contexts 4K \
    --samples 50 --methods $M --out /tmp/r4.json > $OUT/ruler-4k.log 2>&1
echo "ruler 4K rc=$? $((SECONDS - t0)) s (left $left s)" >> $OUT/gpu.txt
python3 -c "import json; d = json.load(open('/tmp/r4.json')); print(json.dumps(d['run']['quality'], indent=1)); print(len(d['results']), 'records')" > $OUT/ruler-4k-header.json 2>&1
cat $OUT/gpu.txt; grep -v "rel err" $OUT/kernel-check.log | tail -3 | cut -c1-200
grep -A6 "^int" $OUT/sweeps.log | cut -c1-150; grep "^\[" $OUT/quant.log | cut -c1-170
sed -n "/^3\./,/^4\./p" $OUT/checks.log | cut -c1-170; tail -2 $OUT/ruler-4k.log | cut -c1-200; cat $OUT/ruler-4k-header.json
