set -x
export PYTHONPATH=. PYTHONUNBUFFERED=1
mkdir -p /tmp/r0
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem --format=csv
python3 -c "import jax; print(jax.__version__, jax.devices())"
NCU=$(which ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1); echo "ncu=$NCU"
# 1. ncu: INT8/INT4 views, PTX vs element-wise unpacking, B=8 S=32k T=1 (4 launches)
timeout 150 $NCU --clock-control none -k regex:quant_attention --launch-count 4 \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  --section WarpStateStats --section InstructionStats --section Occupancy --section LaunchStats \
  python3 experiments/quant_kernel_once.py --slots 32768 --batch 8 > /tmp/r0/ncu_b8.txt 2>&1
tail -5 /tmp/r0/ncu_b8.txt
grep -E "launched|Duration|Throughput|Issue Slots|Executed Ipc|Pipe|quant_attention" /tmp/r0/ncu_b8.txt | head -60
# 2. tuning (PTX vs element-wise) then the kernels table at the new default
timeout 380 python3 experiments/bench_quantspec.py --phases tuning kernels --deadline-s 370 --out /tmp/r0/qs 2>&1 | tail -45
tar czf $OUT/r0.tgz -C /tmp r0
