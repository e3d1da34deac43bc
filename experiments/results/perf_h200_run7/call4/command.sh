# session 7, call 3 (nvidia-h200, one GPU, sequential): final numbers
cd .gpurun/t1; export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R/prof
S=$(date +%s); el() { echo "[$(( $(date +%s) - S ))s] $*" >> $R/steps.log; }
timeout 90 python3 diag.py > $R/diag.log 2>&1; el diag
grep -q "DIAG OK" $R/diag.log || { export SPECDEC_SKINNY_MATMUL=xla; el "DIAG failed: skinny kernel off"; }
timeout 45 python3 experiments/profile_step.py --model small --batch 1 --out $R/prof > $R/prof.log 2>&1; el prof_small
timeout 60 python3 experiments/profile_step.py --model 8b --batch 1 --out $R/prof >> $R/prof.log 2>&1; el prof_8b
rm -f $R/prof/8b_*_hlo.txt
left=$(( 550 - $(date +%s) + S )); el "bench_all with ${left}s"
timeout $left python3 experiments/bench_all.py --sections ceilings plain_8b hf_8b small_step speculation train_mfu --out $R/ba --deadline-s $(( left - 8 )) > $R/ba.log 2>&1; el bench_all
tar czf $OUT/r0.tgz -C /tmp r0; ls -la $OUT
