"""The lent H200's ceilings as measured with device-side timing, for scripts that report
rooflines without measuring them in the same run (bench_all measures them in its own run).

Bandwidth: a bf16 GEMV timed by CUPTI read 4.644 / 4.645 / 4.644 TB/s in bench_all runs 2 and 4
(experiments/results/bench_all_h200_run2, run4); a device-to-device copy timed with CUDA events
4.24 TB/s, a jnp copy 3.37 TB/s. The best measured is the ceiling (a lower one flatters the code).
Matmul: 788 TFLOP/s for an 8192^3 bf16 product through torch (KINDS.md); 730 through jax
(bench_all run 2).
"""

H200_BYTES_PER_S = 4.64e12
H200_BF16_FLOPS = 790e12
