# run 9, call 5 (nvidia-h200): `small` B=1 step with split-K-free skinny-matmul tilings (wall, 2 rounds)
export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R
for r in 1 2; do for v in base s1_n32 s1_n16 s1_n16_gu_base; do
VARIANT=$v timeout 60 python3 .gpurun/splits.py --wall --model small --batch 1 --label ${v}_r$r --out $R/sp 2>&1 | grep -v Warn | grep "variant\|ms_per_step" | cut -c1-400
done; done
rm -f $R/sp/*_hlo.txt
tar czf $OUT/r0.tgz -C /tmp r0
echo done $SECONDS
