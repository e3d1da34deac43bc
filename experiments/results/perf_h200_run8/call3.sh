set -x
export PYTHONUNBUFFERED=1
mkdir -p /tmp/r0 /tmp/site
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=.:/tmp/site
F="python3 experiments/flag_sweep.py --variants default cmdbuf --child-timeout 90"
$F --models small --batches 1 --step-args="--wall" --deadline-s 80 --out /tmp/r0/flags_small_b1 2>&1 | grep -v Warn | cut -c1-500
$F --models 8b --batches 1 8 --step-args="--wall" --deadline-s 200 --out /tmp/r0/flags_8b 2>&1 | grep -v Warn | cut -c1-500
tar czf $OUT/r0.tgz -C /tmp r0
LEFT=$((585 - SECONDS))
echo "decode gets $LEFT s"
XLA_FLAGS="--xla_gpu_enable_command_buffer=+CONDITIONAL,+WHILE --xla_gpu_graph_min_graph_size=1" \
  timeout $LEFT python3 experiments/bench_quantspec.py --phases decode --deadline-s $((LEFT - 8)) \
  --out /tmp/r0/qs_dec_cmdbuf 2>&1 | grep -v Warn | tail -14
tar czf $OUT/r0.tgz -C /tmp r0
