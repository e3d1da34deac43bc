# run 9, call 4 (nvidia-h200): generate-timed A/B of command buffers (3 pairs per figure), tree attention
export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R
B="python3 experiments/bench_all.py --no-torch"
timeout 140 $B --sections ceilings plain_8b small_step --out $R/cmdbuf_a --deadline-s 135 > $R/cmdbuf_a.log 2>&1; echo "a $? $SECONDS"
SPECDEC_COMMAND_BUFFERS=0 timeout 140 $B --sections ceilings plain_8b small_step --out $R/default_b --deadline-s 135 > $R/default_b.log 2>&1; echo "b $? $SECONDS"
tar czf $OUT/r0.tgz -C /tmp r0
timeout 80 $B --sections ceilings plain_8b --out $R/cmdbuf_c --deadline-s 75 > $R/cmdbuf_c.log 2>&1; echo "c $? $SECONDS"
tar czf $OUT/r0.tgz -C /tmp r0
left=$(( 560 - SECONDS ))
timeout $left $B --sections ceilings tree_attn --out $R/tree --deadline-s $(( left - 5 )) > $R/tree.log 2>&1; echo "tree $? $SECONDS"
tar czf $OUT/r0.tgz -C /tmp r0
grep -h "^| " $R/*/bench_all.md | grep -v "^| ratio\|^|---"
echo done $SECONDS
