# session 7, call 7 (nvidia-h200): one-row dot without padding: check in the loop, profile, 8B ratios
cd .gpurun/t1; export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R/prof
S=$(date +%s); el() { echo "[$(( $(date +%s) - S ))s] $*" >> $R/steps.log; }
timeout 60 python3 diag.py > $R/diag.log 2>&1; el diag
grep -q "DIAG OK" $R/diag.log || { export SPECDEC_SKINNY_MATMUL=xla; el "DIAG failed: skinny kernel off"; }
timeout 50 python3 experiments/profile_step.py --model 8b --batch 1 --out $R/prof > $R/prof.log 2>&1; el prof_8b
rm -f $R/prof/8b_*_hlo.txt
timeout 80 python3 experiments/bench_all.py --sections ceilings plain_8b --no-torch --out $R/ba --deadline-s 75 > $R/ba.log 2>&1; el bench_all
tar czf $OUT/r0.tgz -C /tmp r0; ls -la $OUT
