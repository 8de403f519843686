#!/bin/bash
# issue 23 on the H200: kernel check, RULER 4K x 50 samples x 9 methods (quality mode), A/B vs the measured path
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export KVCOMPRESS_CACHE=.carry/cache KVCOMPRESS_GIT_COMMIT=e730f43 HF_HUB_OFFLINE=1
D=$OUT/quality; mkdir -p $D
M=vanilla,knorm@0.5,snapkv@0.5,expected_attention@0.5,streaming_llm@0.5,knorm@0.875,snapkv@0.875,expected_attention@0.875,streaming_llm@0.875
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $D/gpu.txt
python3 -c "import torch, transformers, kvpress; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name(0))" >> $D/gpu.txt 2>&1
t0=$SECONDS
KVCOMPRESS_CHECK_DEVICE=cuda timeout 150 python3 tests/kernel_check.py gpu > $D/kernel_check_gpu.log 2>&1; echo "kernel_check gpu rc=$? $((SECONDS - t0)) s" >> $D/times.txt
t0=$SECONDS
timeout 330 python3 test_long_context.py --random-weights --tasks ruler --contexts 4K --samples 50 --methods $M --out $D/ruler-4k-50.json > $D/ruler-4k-50.log 2>&1; echo "ruler 4K x50 rc=$? $((SECONDS - t0)) s (wall, incl. model build)" >> $D/times.txt
t0=$SECONDS
timeout 200 python3 tools/quality_ab.py --out-dir $D/ab-4k -- --random-weights --tasks niah_single_1,niah_multikey_2,ruler_vt --contexts 4K --samples 2 --methods $M > $D/ab-4k.log 2>&1; echo "A/B rc=$? $((SECONDS - t0)) s" >> $D/times.txt
cat $D/times.txt; tail -5 $D/ruler-4k-50.log; tail -8 $D/ab-4k.log
