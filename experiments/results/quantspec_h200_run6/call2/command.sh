set -x
export PYTHONPATH=. PYTHONUNBUFFERED=1
mkdir -p /tmp/r0
# 1. ncu: INT8 view, PTX (exact operands, folded bias) vs element-wise unpacking, B=8 S=32k T=1
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 170 ncu --clock-control none -k regex:quant_attention --launch-count 2 \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  --section WarpStateStats --section InstructionStats --section Occupancy --section LaunchStats \
  --metrics sass__inst_executed_per_opcode,smsp__pcsamp_warps_issue_stalled_long_scoreboard,smsp__pcsamp_warps_issue_stalled_barrier,smsp__pcsamp_warps_issue_stalled_short_scoreboard,smsp__pcsamp_warps_issue_stalled_wait,smsp__pcsamp_warps_issue_stalled_math_pipe_throttle,smsp__pcsamp_warps_issue_stalled_mio_throttle \
  --print-metric-instances values \
  python3 experiments/quant_kernel_once.py --slots 32768 --batch 8 --views int8 > /tmp/r0/ncu_b8.txt 2>&1
grep -E "launched|Duration|DRAM Through|Issue Slots|Executed Ipc A|Achieved Active|Registers Per|Dynamic Shared|Executed Instructions  |sass__inst|stalled" /tmp/r0/ncu_b8.txt | cut -c1-400 | head -40
# 2. tuning: PTX unpacking, key block x splits x warps, at S = 32k, B 1 and 8, T = 1
timeout 330 python3 experiments/bench_quantspec.py --phases tuning --deadline-s 320 --out /tmp/r0/qs 2>&1 | tail -75
tar czf $OUT/r0.tgz -C /tmp r0
