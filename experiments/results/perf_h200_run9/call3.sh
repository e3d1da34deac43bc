# run 9, call 3 (nvidia-h200): bench_all with the command-buffer default (in-process), then a train profile
export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R
python3 -c "import specdec, os; print('STATUS', specdec.xla_flags.STATUS, os.environ.get('XLA_FLAGS'))" 2>&1 | grep STATUS
timeout 520 python3 experiments/bench_all.py --sections ceilings plain_8b hf_8b small_step speculation train_mfu --out $R/ba --deadline-s 510 > $R/ba.log 2>&1
echo "bench_all rc $? at $SECONDS s"
tar czf $OUT/r0.tgz -C /tmp r0
left=$(( 585 - SECONDS ))
if [ $left -gt 40 ]; then
timeout $left python3 experiments/profile_train.py --variant batch=16,attention=cudnn --out $R/train 2>&1 | grep -v Warn | tail -3
rm -f $R/train/*_hlo.txt
fi
tar czf $OUT/r0.tgz -C /tmp r0
echo done $SECONDS
