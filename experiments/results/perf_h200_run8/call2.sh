set -x
export PYTHONUNBUFFERED=1
mkdir -p /tmp/r0
export PYTHONPATH=.
F="python3 experiments/flag_sweep.py --models small --variants default cmdbuf --child-timeout 100"
$F --batches 1 --step-args "--wall" --tag _p128 --deadline-s 200 --out /tmp/r0/flags_b1 2>&1 | grep -v Warn | cut -c1-400
tar czf $OUT/r0.tgz -C /tmp r0
$F --batches 8 --step-args "--wall --prompt-len 3968" --tag _p4k --deadline-s 200 --out /tmp/r0/flags_b8 2>&1 | grep -v Warn | cut -c1-400
tar czf $OUT/r0.tgz -C /tmp r0
$F --batches 8 --step-args "--wall --prompt-len 3968 --kv-cache int8-hierarchical --drafter quantspec --depth 5" --tag _p4k_qs --deadline-s 220 --out /tmp/r0/flags_qs 2>&1 | grep -v Warn | cut -c1-400
tar czf $OUT/r0.tgz -C /tmp r0
timeout $((580 - SECONDS)) python3 experiments/profile_step.py --model small --batch 8 --prompt-len 3968 --kv-cache int8-hierarchical --drafter quantspec --depth 5 --new 64 --out /tmp/r0/prof 2>&1 | grep -v Warn | head -40
tar czf $OUT/r0.tgz -C /tmp r0
