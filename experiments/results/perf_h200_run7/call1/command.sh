# session 7, call 1 (nvidia-h200-x2): GPU 0 decode kernels, GPU 1 training profile + benches
# t0 = git archive 3aa482d^ (before the contiguous batch-1 cache write), t1 = git archive 20b5263..fccf047 (HEAD then)
cd .gpurun; export PYTHONUNBUFFERED=1; R=/tmp/r0; Q=/tmp/r1; mkdir -p $R/prof $Q
prof() { # dir label env args...
  (cd $1 && env PYTHONPATH=. $3 timeout 90 python3 experiments/profile_step.py --label $2 --out $R/prof "${@:4}" >> $R/prof.log 2>&1); }
gpu0() {
  export CUDA_VISIBLE_DEVICES=0
  (cd t1 && PYTHONPATH=. timeout 170 python3 experiments/bench_matvec.py --out $R/matvec --deadline-s 150 > $R/matvec.log 2>&1)
  for v in xla pallas xla-two-rows; do prof t1 small_b1_$v SPECDEC_SKINNY_MATMUL=$v --model small --batch 1; done
  prof t0 small_b1_t0 X=1 --model small --batch 1
  for v in xla pallas; do prof t1 8b_b1_$v SPECDEC_SKINNY_MATMUL=$v --model 8b --batch 1; done
  prof t0 8b_b1_t0 X=1 --model 8b --batch 1
  for v in xla pallas; do prof t1 8b_b8_$v SPECDEC_SKINNY_MATMUL=$v --model 8b --batch 8; done
  rm -f $R/prof/8b_*_hlo.txt
}
gpu1() {
  export CUDA_VISIBLE_DEVICES=1; cd t1; export PYTHONPATH=.
  timeout 260 python3 experiments/profile_train.py --out $Q/train --deadline-s 200 \
    --variant batch=16,attention=cudnn --variant batch=16,attention=cudnn,loss_chunk=4096 \
    --variant batch=32,attention=cudnn,loss_chunk=4096 --variant batch=16,attention=cudnn,remat=1 \
    --variant batch=64,seq=256,attention=cudnn,loss_chunk=4096 > $Q/train.log 2>&1
  timeout 100 python3 experiments/bench_all.py --sections tree_attn --no-torch --bandwidth 4.645e12 --out $Q/ba_tree --deadline-s 90 > $Q/ba_tree.log 2>&1
  timeout 150 python3 experiments/bench_all.py --sections small_step speculation --no-torch --bandwidth 4.645e12 --out $Q/ba_small --deadline-s 140 > $Q/ba_small.log 2>&1
}
gpu0 & gpu1 & wait
tar czf $OUT/r0.tgz -C /tmp r0; tar czf $OUT/r1.tgz -C /tmp r1; ls -la $OUT
