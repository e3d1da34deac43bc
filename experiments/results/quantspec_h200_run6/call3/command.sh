set -x
export PYTHONPATH=. PYTHONUNBUFFERED=1
mkdir -p /tmp/r0 /tmp/dump
timeout 300 python3 .gpurun/ab.py /tmp/r0/ab.json 2>&1 | grep -v Warn
XLA_FLAGS="--xla_dump_to=/tmp/dump" timeout 120 python3 experiments/quant_kernel_once.py --slots 8192 --batch 8 --views int8 int4 2>&1 | tail -3
ls -la /tmp/dump | grep -i ptx | head
mkdir -p /tmp/r0/sass
for f in $(grep -l "quant_attention" /tmp/dump/*.ptx | head -4); do
  b=$(basename $f .ptx); cp $f /tmp/r0/sass/$b.ptx
  ptxas -arch=sm_90 -v $f -o /tmp/$b.cubin > /tmp/r0/sass/$b.ptxas.txt 2>&1
  cuobjdump -sass /tmp/$b.cubin > /tmp/r0/sass/$b.sass 2>&1
  wc -l /tmp/r0/sass/$b.sass; grep -i "registers\|spill" /tmp/r0/sass/$b.ptxas.txt | head -4
done
tar czf $OUT/r0.tgz -C /tmp r0
