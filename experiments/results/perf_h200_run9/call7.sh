# run 9, call 7: bench_all plain_8b (generate-timed, 3 pairs) with the re-tuned 8B q/k/v tiling
export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R
timeout 100 python3 experiments/bench_all.py --no-torch --sections ceilings plain_8b --out $R/ba7 --deadline-s 95 > $R/ba7.log 2>&1; echo "ba $? $SECONDS"
grep "^| plain" $R/ba7/bench_all.md
tar czf $OUT/r0.tgz -C /tmp r0
