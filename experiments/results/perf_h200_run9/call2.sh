set -x
export PYTHONUNBUFFERED=1
mkdir -p /tmp/r0
T="timeout 110 python3 experiments/profile_train.py --variant batch=16,attention=cudnn"
for r in 1 2; do
(cd .gpurun/t0 && PYTHONPATH=. $T --out /tmp/r0/t0_r$r 2>&1 | grep -v Warn | tail -4)
PYTHONPATH=. $T --out /tmp/r0/t1_r$r 2>&1 | grep -v Warn | tail -4
done
rm -f /tmp/r0/t0_r*/*_hlo.txt /tmp/r0/t1_r2/*_hlo.txt; gzip /tmp/r0/t1_r1/*_hlo.txt
PYTHONPATH=. timeout 100 python3 experiments/profile_step.py --wall --model small --batch 1 --label small_b1_t1 --out /tmp/r0/step 2>&1 | grep -v Warn | tail -2
rm -f /tmp/r0/step/*_hlo.txt
tar czf $OUT/r0.tgz -C /tmp r0
echo done $SECONDS
