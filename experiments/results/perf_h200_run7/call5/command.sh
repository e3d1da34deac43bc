# session 7, call 4 (nvidia-h200): training after the hand-written backward
cd .gpurun/t1; export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R
S=$(date +%s); el() { echo "[$(( $(date +%s) - S ))s] $*" >> $R/steps.log; }
timeout 100 python3 experiments/profile_train.py --out $R/train --deadline-s 60 --variant batch=16,attention=cudnn --variant batch=32,attention=cudnn > $R/train.log 2>&1; el train
timeout 120 python3 experiments/bench_all.py --sections ceilings train_mfu --no-torch --out $R/ba --deadline-s 110 > $R/ba.log 2>&1; el bench_all
tar czf $OUT/r0.tgz -C /tmp r0; ls -la $OUT
