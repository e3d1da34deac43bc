set -x
export PYTHONUNBUFFERED=1 PYTHONPATH=.
mkdir -p /tmp/r0
python3 -c "import specdec, os, jax; print('STATUS', specdec.xla_flags.STATUS, os.environ.get('XLA_FLAGS')); print(jax.devices())" 2>&1 | grep -v Warn
P="timeout 100 python3 experiments/profile_step.py"
for r in 1 2; do for f in 0 1; do
SPECDEC_FUSED_NORM=$f $P --wall --model small --batch 1 --label small_b1_fn${f}_r$r --out /tmp/r0/fn 2>&1 | grep -v Warn | tail -3
done; done
SPECDEC_FUSED_NORM=1 $P --model small --batch 1 --label small_b1_fn1_cupti --out /tmp/r0/fn 2>&1 | grep -v Warn | tail -3
SPECDEC_FUSED_NORM=0 $P --model small --batch 1 --label small_b1_fn0_cupti --out /tmp/r0/fn 2>&1 | grep -v Warn | tail -3
for f in 0 1; do
SPECDEC_FUSED_NORM=$f $P --wall --model 8b --batch 1 --new 48 --label 8b_b1_fn${f} --out /tmp/r0/fn 2>&1 | grep -v Warn | tail -3
done
rm -f /tmp/r0/fn/*_hlo.txt
timeout 120 python3 experiments/profile_train.py --out /tmp/r0/train --variant batch=16,attention=cudnn 2>&1 | grep -v Warn | tail -5
gzip /tmp/r0/train/*_hlo.txt
tar czf $OUT/r0.tgz -C /tmp r0
echo done $SECONDS
