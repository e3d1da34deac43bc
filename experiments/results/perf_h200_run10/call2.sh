# run 10, call 2: where the 8B EAGLE-3 + Chain(4) cycle goes (CUPTI, no graphs), and the skinny kernel at the verify's rows (5 = B1 x 5, 40 = B8 x 5; MAX_ROWS 64)
export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R
timeout 230 python3 experiments/bench_matvec.py --shapes 8b_qkv,8b_o,8b_gate_up,8b_down --rows 5,40 --out $R/bm --deadline-s 200 > $R/bm.log 2>&1; echo "bm $? $SECONDS"
tail -25 $R/bm.log
tar czf $OUT/r0.tgz -C /tmp r0
for b in 8 1; do
SPECDEC_COMMAND_BUFFERS=0 timeout 170 python3 experiments/profile_step.py --model 8b --batch $b --drafter eagle3 --new 24 --out $R/ps > $R/ps_b$b.log 2>&1; echo "ps $b $? $SECONDS"
rm -f $R/ps/*hlo*
tar czf $OUT/r0.tgz -C /tmp r0
done
