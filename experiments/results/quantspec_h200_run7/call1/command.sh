# run 11, call 1: quantised kernel, keys-first orientation A/B (tuning at S=32k, T=1 and 16) + kernels table at 32k
export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv > $R/gpu.txt
timeout 420 python3 experiments/bench_quantspec.py --out $R/q1 --phases tuning kernels --kernel-slots 32768 --tuning-blocks 1 16 --deadline-s 400 > $R/q1.log 2>&1; echo "q1 $? $SECONDS"
grep "^| " $R/q1/quantspec.md
tar czf $OUT/r0.tgz -C /tmp r0
