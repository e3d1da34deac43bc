# run 11, call 4: the one-kernel K/V cache write (SPECDEC_KV_WRITE=pallas) against XLA's two writes, alternating processes
export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R
timeout 60 python3 .gpurun/kvcheck.py > $R/kvcheck.log 2>&1; echo "kvcheck $? $SECONDS"; grep kvcheck $R/kvcheck.log
for run in 1 2; do
  for w in xla pallas; do
    S="plain_8b small_step"; [ $run = 1 ] && S="plain_8b eagle_8b small_step"
    SPECDEC_KV_WRITE=$w timeout 150 python3 experiments/bench_all.py --no-torch --out $R/$w$run --sections $S --bandwidth 4.484e12 --deadline-s 140 > $R/$w$run.log 2>&1
    echo "$w$run $? $SECONDS"; grep "^| " $R/$w$run/bench_all.md | grep -v "^| ratio\|^|---" | cut -c1-200
  done
done
tar czf $OUT/r0.tgz -C /tmp r0
