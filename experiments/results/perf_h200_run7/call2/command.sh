# session 7, call 2 (nvidia-h200, one GPU, sequential)
cd .gpurun/t1; export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R/prof
S=$(date +%s); el() { echo "[$(( $(date +%s) - S ))s] $*" >> $R/steps.log; }
el start
timeout 130 python3 experiments/profile_train.py --out $R/train --deadline-s 95 \
  --variant batch=16,attention=cudnn --variant batch=16,attention=cudnn,loss_chunk=4096 \
  --variant batch=32,attention=cudnn,loss_chunk=4096 > $R/train.log 2>&1; el train
timeout 100 python3 experiments/bench_matvec.py --out $R/matvec --deadline-s 80 --shapes small_qkv,small_o,small_gate_up,small_down,small_head > $R/matvec.log 2>&1; el matvec
timeout 60 python3 experiments/profile_step.py --model small --batch 1 --out $R/prof > $R/prof.log 2>&1; el prof_small
timeout 80 python3 experiments/profile_step.py --model 8b --batch 1 --out $R/prof >> $R/prof.log 2>&1; el prof_8b
rm -f $R/prof/8b_*_hlo.txt
left=$(( 545 - $(date +%s) + S )); el "bench_all with ${left}s"
timeout $left python3 experiments/bench_all.py --sections ceilings small_step speculation --no-torch --out $R/ba_small --deadline-s $(( left - 10 )) > $R/ba_small.log 2>&1; el bench_all
tar czf $OUT/r0.tgz -C /tmp r0; ls -la $OUT
