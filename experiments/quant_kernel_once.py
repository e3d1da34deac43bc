"""Launch the quantised-KV attention kernel once per variant (for a profiler such as Nsight
Compute: `ncu -k regex:quant_attention python3 experiments/quant_kernel_once.py`), printing the
order of the launches. Llama-3-8B heads, random planes (bench_quantspec.random_view).

    PYTHONPATH=. python3 experiments/quant_kernel_once.py --slots 32768 --batch 8
"""

import argparse
import dataclasses

import jax

from experiments.bench_quantspec import _inputs, random_view
from kernels_pallas import quant_attention_triton as qt
from specdec.quant_cache import QuantKV

HEADS = (32, 8, 128)  # query heads, KV heads, head dim


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--slots", type=int, default=32768)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--block", type=int, default=1)
    p.add_argument("--views", nargs="+", default=["int8", "int4"], choices=("int8", "int4"))
    p.add_argument("--interpret", action="store_true", help="CPU: interpret mode (a check)")
    args = p.parse_args(argv)
    num_heads, kv_heads, head_dim = HEADS
    mode = QuantKV()
    key, q, region = _inputs(args.slots, args.batch, args.block, HEADS)
    rows = args.block * num_heads // kv_heads
    for view in args.views:
        default = qt.default_block_sizes(
            rows, mode.group, args.batch * kv_heads, args.slots, num_cores=qt._num_cores(),
            upper_only=view == "int4",
        )  # fmt: skip
        v = random_view(key, args.batch, args.slots, kv_heads, head_dim, mode, view == "int4")
        lengths = v.base + mode.recent_tokens + 1
        for ptx in (True, False):
            bs = dataclasses.replace(default, ptx_unpack=ptx)
            fn = jax.jit(
                lambda q, v, n, r, bs=bs: qt.quant_attention_triton(
                    q, v, n, r, block_sizes=bs, interpret=args.interpret
                )
            )
            out = fn(q, v, lengths, region)
            jax.block_until_ready(out)
            print(f"launched: view={view} {bs}", flush=True)
            del out
        del v


if __name__ == "__main__":
    main()
