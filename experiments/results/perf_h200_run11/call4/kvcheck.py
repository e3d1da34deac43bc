"""GPU check (run 11, call 4): greedy tokens with the one-kernel K/V write equal XLA's (plain and
NGram + Chain, batch 3, ragged prompts), float32 and bf16, on a random small model, in one process
(the setting keys the compiled loop). Reformatted for the linter after the run: the same checks
and output."""

import functools
import os

import numpy as np

import specdec
from drafters import NGram
from specdec.config import tiny_config

print = functools.partial(print, flush=True)
cfg = tiny_config(
    vocab_size=512, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2, head_dim=64
)
rng = np.random.default_rng(0)
prompts = [rng.integers(0, 512, n).tolist() for n in (37, 90, 61)]
for dtype in ("float32", "bfloat16"):
    model = specdec.Model.random(cfg, seed=1, dtype=dtype)
    out = {}
    for choice in ("xla", "pallas"):
        os.environ["SPECDEC_KV_WRITE"] = choice
        out[choice] = [
            specdec.generate(model, prompts, max_new_tokens=64, **kw).tokens
            for kw in ({}, {"drafter": NGram(max_ngram=2)})
        ]
    for name, a, b in zip(("plain", "ngram"), out["xla"], out["pallas"], strict=True):
        first = [
            int(np.argmax(ra != rb)) if (ra != rb).any() else None
            for ra, rb in zip(a, b, strict=True)
        ]
        equal = bool((a == b).all())
        print(f"kvcheck {dtype} {name}: equal {equal}, first difference per row {first}")
