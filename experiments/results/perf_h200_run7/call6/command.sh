# session 7, call 5: A/B of the row-scale backward (t0: scale applied outside the custom VJP)
cd .gpurun; export PYTHONUNBUFFERED=1; R=/tmp/r0; mkdir -p $R
for t in t0 t1 t0 t1; do (cd $t && PYTHONPATH=. timeout 60 python3 experiments/profile_train.py --out $R/train_$t --variant batch=16,attention=cudnn >> $R/train_$t.log 2>&1); done
tar czf $OUT/r0.tgz -C /tmp r0
