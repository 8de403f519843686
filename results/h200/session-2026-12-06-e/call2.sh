#!/bin/bash
# Call 2 (an H200 came for call 1). Call 1 at b16ca23 read each int code with its own load (gather): int4 decoded at
# 95 tok/s at 8K batch 1 and 142 aggregate at batch 8 (vanilla 190 / 1083), and its sweep ran at group 1 (the
# dataclass default, not the method's 32). Here: bytes loaded once and unpacked again (block 32, the old kernel),
# the GPU check, the sweep at the method's group 32, decode at 8K batch 1 / 8 / 32 (device time left: 448 s;
# call 1's capacity is not resumed; fp8's at 8K again, its codes now staged).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KVCOMPRESS_CACHE=.carry/cache HF_HUB_OFFLINE=1 KVCOMPRESS_GIT_COMMIT=${COMMIT:-unknown}
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/gpu.txt
t0=$SECONDS
(KVCOMPRESS_CHECK_DEVICE=cuda timeout 60 python3 tests/kernel_check.py gpu; echo "rc=$?") > $OUT/kernel-check.log 2>&1
echo "kernel check gpu $((SECONDS - t0)) s" >> $OUT/times.txt; t0=$SECONDS
timeout 200 python3 benchmark.py --random-weights --contexts 8K --methods vanilla,fp8,int4,knorm@0.5+fp8 \
    --batch 1,8,32 --admission cloned --max-new-tokens 128 --repeats 3 --engine fast --out $OUT/quant-8k.json \
    > $OUT/quant-8k.log 2>&1
echo "quant 8K rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt
timeout 20 python3 benchmark.py check $OUT/quant-8k.json > $OUT/quant-8k-check.log 2>&1
t0=$SECONDS  # fp8's codes now wait in the staging slabs (call 1: 81-86 fitted of the 111 predicted at 8K, 80 GiB)
timeout 80 python3 benchmark.py capacity --random-weights --budget 80GiB --contexts 8K --methods fp8 \
    --out $OUT/capacity-fp8.json > $OUT/capacity-fp8.log 2>&1
echo "capacity fp8 rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt; t0=$SECONDS
timeout $((340 - SECONDS)) python3 tools/attention_sweep.py --int --shapes 8x8192,32x8192 > $OUT/int-sweep.log 2>&1
echo "int sweep rc=$? $((SECONDS - t0)) s" >> $OUT/times.txt
cat $OUT/gpu.txt $OUT/times.txt; grep -v "rel err" $OUT/kernel-check.log | tail -3 | cut -c1-250
grep -A5 "^int" $OUT/int-sweep.log | cut -c1-130; grep "^\[" $OUT/quant-8k.log | cut -c1-160
sed -n '/^3\./,/^4\./p' $OUT/quant-8k-check.log | cut -c1-170; grep -v "^memory" $OUT/capacity-fp8.log | tail -14 | cut -c1-170
