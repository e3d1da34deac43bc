"""The skinny-matmul kernel inside a decode loop (calls 4 and 7): a 2-layer Llama-3-8B-shape model,
greedy, 16 new tokens at batch 1 and 2, with SPECDEC_SKINNY_MATMUL=xla and =auto; prints each run's
tokens and "DIAG OK" when the kernel's runs emitted tokens of the same shape with no token 0."""

import dataclasses
import json
import os

import jax
import numpy as np

import specdec
from specdec import projection
from specdec.config import llama3_8b_config
from specdec.engine.generate import clear_compiled_loops

cfg = dataclasses.replace(llama3_8b_config(), num_layers=2)
model = specdec.Model.random(cfg, seed=0, dtype="bfloat16")
prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 64)).tolist()
outs = {}
for env in ("xla", "auto"):
    for batch in (1, 2):
        os.environ[projection.SKINNY_ENV] = env
        clear_compiled_loops()
        jax.clear_caches()
        out = specdec.generate(model, prompts[:batch], max_new_tokens=16)
        outs[env, batch] = np.asarray(out.tokens)
        row = dict(env=env, batch=batch, tokens=outs[env, batch].tolist())
        print(json.dumps(dict(row, lengths=np.asarray(out.lengths).tolist())), flush=True)
ok = all(
    (outs["auto", b] != 0).all() and outs["auto", b].shape == outs["xla", b].shape for b in (1, 2)
)
same = [float((outs["auto", b] == outs["xla", b]).mean()) for b in (1, 2)]
print("DIAG", "OK" if ok else "FAIL", "token agreement with xla", same, flush=True)
