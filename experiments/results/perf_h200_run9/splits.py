"""Run 9 call 5: the `small` projections' skinny-matmul tilings without split-K (no partial-sum
kernel) against the heuristic's (splits 12-64). VARIANT picks TUNED_BLOCKS entries, then
profile_step.main runs with the remaining argv."""

import os
import sys

from kernels_pallas import matvec_triton as mt
from kernels_pallas.matvec_triton import MatvecBlocks as B

SHAPES = {
    "qkv": (1, 768, 1280),
    "o": (1, 768, 768),
    "gate_up": (1, 768, 4096),
    "down": (1, 2048, 768),
}
VARIANTS = {
    "base": {},
    "s1_n32": {s: B(32, 128, 1, use_dot=False) for s in SHAPES.values()},
    "s1_n16": {s: B(16, 128, 1, use_dot=False) for s in SHAPES.values()},
    "s1_n16_gu_base": {
        s: B(16, 128, 1, use_dot=False) for n, s in SHAPES.items() if n != "gate_up"
    },
}
variant = os.environ["VARIANT"]
mt.TUNED_BLOCKS.update(VARIANTS[variant])
print("variant", variant, {k: mt.default_blocks(*s) for k, s in SHAPES.items()}, flush=True)
from experiments import profile_step  # noqa: E402

profile_step.main(sys.argv[1:])
