"""A/B in one process: the quantised kernel before (kernels_prev: the tree at the start of this
change, PTX unpacking with exact operands, one block per loop step) and after (group loop).
(Laid out by the linter after the run; the code is what ran, from the repository root, with a
copy of kernels_pallas renamed kernels_prev under .gpurun/prev.)"""

import dataclasses
import json
import sys

sys.path.insert(0, ".gpurun/prev")
import jax
from kernels_prev import quant_attention_triton as old

from experiments.bench_quantspec import H200_BYTES_PER_S, _inputs, quant_sets, view_bytes
from experiments.bench_tree_attention import Timer
from kernels_pallas import quant_attention_triton as new
from specdec.quant_cache import QuantKV

timer, mode, heads = Timer(), QuantKV(), (32, 8, 128)
rows_out = []
cpu = jax.default_backend() == "cpu"
shapes = [(1024, 1, 1)] if cpu else [(32768, 8, 1), (32768, 1, 1), (32768, 8, 16), (8192, 8, 1)]
for slots, batch, block in shapes:
    key, q, region = _inputs(slots, batch, block, heads)
    shape = (batch, slots, 8, 128)
    rows = block * 4
    for view in ("int8", "int4"):
        sets = quant_sets(key, q, region, shape, mode, view)
        read = view_bytes(sets[0][1])
        for name, mod in (("before", old), ("after", new), ("before", old), ("after", new)):
            d = mod.default_block_sizes(
                rows, mode.group, batch * 8, slots, num_cores=mod._num_cores()
            )
            tilings = [d]
            if name == "after" and block == 1 and slots in (1024, 32768):
                tilings += [
                    dataclasses.replace(d, num_splits=round(d.num_splits * f)) for f in (1.5, 2)
                ]
                tilings += [dataclasses.replace(d, block_k=128)]
            for bs in tilings:
                fn = jax.jit(
                    lambda q, v, n, r, bs=bs, mod=mod: mod.quant_attention_triton(
                        q, v, n, r, block_sizes=bs, interpret=cpu
                    )
                )
                ms = timer(fn, sets)["ms"]
                row = dict(
                    S=slots, B=batch, T=block, view=view, kernel=name, block_k=bs.block_k,
                    splits=bs.num_splits, ms=round(ms, 5),
                    roofline=round(read / (ms * 1e-3) / H200_BYTES_PER_S, 4),
                )  # fmt: skip
                rows_out.append(row)
                print(row, flush=True)
        del sets
with open(sys.argv[1], "w") as f:
    json.dump(rows_out, f, indent=1)
