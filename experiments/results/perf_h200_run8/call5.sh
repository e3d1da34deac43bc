# session 8 (run 8), call 5: the command run from the repository root on the warm machine
export PYTHONUNBUFFERED=1 PYTHONPATH=.; for f in "" "--xla_gpu_enable_command_buffer=+CONDITIONAL,+WHILE --xla_gpu_graph_min_graph_size=1"; do XLA_FLAGS="$f" timeout 70 python3 experiments/profile_train.py --out /tmp/t --variant batch=16,attention=cudnn 2>&1 | grep -v Warn | grep -i "ms\|mfu" | head -4; done
