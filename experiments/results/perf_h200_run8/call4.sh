export PYTHONUNBUFFERED=1
mkdir -p /tmp/r0
export PYTHONPATH=.
for r in 1 2; do
python3 experiments/flag_sweep.py --variants default cmdbuf --child-timeout 60 --models 8b --batches 1 \
  --step-args="--wall --new 48" --tag _r$r --deadline-s 110 --out /tmp/r0/det 2>&1 | grep -v Warn | cut -c1-420
done
tar czf $OUT/r0.tgz -C /tmp r0
