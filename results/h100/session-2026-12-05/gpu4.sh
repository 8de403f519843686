#!/bin/bash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export KVCOMPRESS_CACHE=.carry/cache KVCOMPRESS_GIT_COMMIT=e730f43+fixes HF_HUB_OFFLINE=1
D=$OUT/h100b; mkdir -p $D
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
t0=$SECONDS; KVCOMPRESS_CHECK_DEVICE=cuda timeout 100 python3 tests/kernel_check.py gpu > $D/kernel_check_gpu.log 2>&1; echo "kernel_check gpu rc=$? $((SECONDS - t0)) s" >> $D/times.txt
t0=$SECONDS; KVCOMPRESS_CHECK_DEVICE=cuda timeout 100 python3 tests/true
t0=$SECONDS; timeout 200 python3 tools/quality_ab.py --out-dir $D/ab-4k -- --random-weights --tasks niah_single_1,niah_multikey_2,ruler_vt --contexts 4K --samples 2 --methods $M > $D/ab-4k.log 2>&1; echo "A/B rc=$? $((SECONDS - t0)) s" >> $D/times.txt
t0=$SECONDS; timeout 150 python3 benchmark.py --random-weights --engine fast --contexts 8K,32K --methods vanilla,fp8,knorm@0.5+fp8 --batch 1,8 --admission cloned --max-new-tokens 128 --repeats 3 --out $D/quant-batch.json > $D/quant-batch.log 2>&1; echo "quant batch rc=$? $((SECONDS - t0)) s" >> $D/times.txt
python3 benchmark.py check $D/quant-batch.json > $D/check-quant-batch.log 2>&1
cat $D/times.txt; tail -3 $D/kernel_check_gpu.log $D/kernel_check_dms.log; tail -14 $D/ab-4k.log; grep -A30 "^3\." $D/check-quant-batch.log | head -32
