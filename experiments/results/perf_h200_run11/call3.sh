# run 11, call 3: hf_small again with the teacher-forced agreement check (and the equal greedy prefix)
export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R
timeout 280 python3 experiments/bench_all.py --out $R/bench_all --sections small_step speculation hf_small --deadline-s 270 > $R/ba.log 2>&1; echo "ba $? $SECONDS"
grep "^| " $R/bench_all/bench_all.md
tar czf $OUT/r0.tgz -C /tmp r0
