# Sourced by a device call's script after tools/device_setup.sh: the GPU kernel checks (the fast engine against hf,
# the DMS kernels), their logs in $OUT and their exit codes and seconds in $OUT/gpu.txt.
t0=$SECONDS
KVCOMPRESS_CHECK_DEVICE=cuda timeout 90 python3 tests/kernel_check.py gpu > $OUT/kernel-check-gpu.log 2>&1
echo "kernel check gpu rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
timeout 90 python3 tests/kernel_check.py dms-gpu > $OUT/kernel-check-dms-gpu.log 2>&1
echo "kernel check dms-gpu rc=$? $((SECONDS - t0)) s" >> $OUT/gpu.txt; t0=$SECONDS
