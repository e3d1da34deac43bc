set -x
export PYTHONUNBUFFERED=1
mkdir -p /tmp/r0/prof /tmp/site
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=.:/tmp/site
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.sm --format=csv
P="python3 experiments/profile_step.py --model small --out /tmp/r0/prof"
timeout 60 $P --batch 1 2>&1 | grep -v Warn | head -30
for kv in default int8-hierarchical; do
  timeout 80 $P --batch 8 --prompt-len 3968 --kv-cache $kv 2>&1 | grep -v Warn | head -30
done
for d in quantspec quantspec4; do
  timeout 100 $P --batch 8 --prompt-len 3968 --kv-cache int8-hierarchical --drafter $d --depth 5 2>&1 | grep -v Warn | head -40
done
tar czf $OUT/r0.tgz -C /tmp r0
timeout 150 python3 experiments/bench_quantspec.py --phases kernels tuning --kernel-heads 12 4 64 \
  --kernel-slots 4096 --deadline-s 140 --out /tmp/r0/qs_small 2>&1 | grep -v Warn | tail -30
tar czf $OUT/r0.tgz -C /tmp r0
LEFT=$((575 - SECONDS))
echo "decode gets $LEFT s"
timeout $LEFT python3 experiments/bench_quantspec.py --phases decode --deadline-s $((LEFT - 10)) \
  --out /tmp/r0/qs_dec 2>&1 | grep -v Warn | tail -30
tar czf $OUT/r0.tgz -C /tmp r0
