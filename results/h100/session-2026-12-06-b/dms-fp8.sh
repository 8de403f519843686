#!/bin/bash
# issue 24, call 2 (same warm H100): dms-8x+fp8's compact cache against dms-8x, fp8 and vanilla at 8K, batch 1 and 8
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache HF_HUB_OFFLINE=1 KVCOMPRESS_GIT_COMMIT=9ea187f
timeout 400 python3 benchmark.py --random-weights --contexts 8K --methods vanilla,fp8,dms-8x,dms-8x+fp8 --batch 1,8 \
    --admission cloned --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/dms-fp8-8k.json > $OUT/dms-fp8-8k.log 2>&1
timeout 60 python3 benchmark.py check $OUT/dms-fp8-8k.json > $OUT/dms-fp8-8k-check.log 2>&1
