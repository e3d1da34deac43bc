set -x
export PYTHONPATH=. PYTHONUNBUFFERED=1
mkdir -p /tmp/r0
git log --oneline -1 2>/dev/null
timeout 560 python3 experiments/bench_quantspec.py --phases tuning kernels decode --kernel-slots 32768 \
  --deadline-s 500 --out /tmp/r0/qs 2>&1 | grep -v Warn | tail -50
tar czf $OUT/r0.tgz -C /tmp r0
