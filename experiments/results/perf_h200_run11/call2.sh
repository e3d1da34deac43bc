# run 11, call 2: the whole bench_all command in one call, targets first (new order)
export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv > $R/gpu.txt
timeout 588 python3 experiments/bench_all.py --out $R/bench_all --deadline-s 572 > $R/ba.log 2>&1; echo "ba $? $SECONDS"
grep "^| " $R/bench_all/bench_all.md
tar czf $OUT/r0.tgz -C /tmp r0
