set -x
export PYTHONUNBUFFERED=1
mkdir -p /tmp/r0 /tmp/site
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=.:/tmp/site
timeout 530 python3 experiments/bench_quantspec.py --phases tuning kernels decode --kernel-slots 32768 \
  --deadline-s 480 --out /tmp/r0/qs 2>&1 | grep -v Warn | tail -40
tar czf $OUT/r0.tgz -C /tmp r0
