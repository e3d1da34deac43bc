# run 10, call 4 (nvidia-h200): bench_all, the sections call 3's deadline cut (small_step and speculation again: eagle_small and hf_small need them)
export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R
timeout 515 python3 experiments/bench_all.py --sections small_step speculation eagle_small train_mfu tree_attn hf_small --out $R/ba4 --deadline-s 505 > $R/ba4.log 2>&1; echo "ba $? $SECONDS"
grep "^| \|^- " $R/ba4/bench_all.md
tar czf $OUT/r0.tgz -C /tmp r0
