# run 10, call 3 (nvidia-h200): bench_all, every section in priority order under one deadline (the cut ones run in call 4)
export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R
timeout 575 python3 experiments/bench_all.py --out $R/ba3 --deadline-s 565 > $R/ba3.log 2>&1; echo "ba $? $SECONDS"
grep "^| \|^- " $R/ba3/bench_all.md
tar czf $OUT/r0.tgz -C /tmp r0
