# run 10, call 1 (nvidia-h200): bench_all without torch: the EAGLE efficiency sections with the plain and speculation ones
export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R
timeout 560 python3 experiments/bench_all.py --no-torch --sections ceilings plain_8b eagle_8b small_step eagle_small speculation --out $R/ba1 --deadline-s 550 > $R/ba1.log 2>&1; echo "ba $? $SECONDS"
grep "^| " $R/ba1/bench_all.md
tar czf $OUT/r0.tgz -C /tmp r0
