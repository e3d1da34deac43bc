# run 9, call 6 (nvidia-h200): 8B one-row projections re-swept; the 8B B=1 step with the winners
export PYTHONUNBUFFERED=1 PYTHONPATH=.; R=/tmp/r0; mkdir -p $R
timeout 150 python3 experiments/bench_matvec.py --shapes 8b_qkv,8b_o,8b_down --rows 1 --deadline-s 130 --out $R/mv > $R/mv.log 2>&1; echo "sweep $? $SECONDS"
tail -12 $R/mv.log
python3 .gpurun/tune8b.py pick $R/mv/bench_matvec.json $R/overrides.json
tar czf $OUT/r0.tgz -C /tmp r0
for r in 1 2; do for v in base $R/overrides.json; do
timeout 60 python3 .gpurun/tune8b.py run $v --wall --model 8b --batch 1 --new 48 --label 8b_b1_$(basename $v .json)_r$r --out $R/step 2>&1 | grep -v Warn | grep "ms_per_step" | cut -c1-300
done; done
rm -f $R/step/*_hlo.txt
tar czf $OUT/r0.tgz -C /tmp r0
echo done $SECONDS
