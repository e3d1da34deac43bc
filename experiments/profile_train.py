"""Where a training step's time goes: one AdamW step of the `small` target (random tokens), timed
on the device kernel by kernel, for several variants (batch, attention, remat, loss), with MFU.

    # on the GPU machine (CUPTI through bench_tree_attention.Timer):
    PYTHONPATH=. python3 experiments/profile_train.py --out $OUT/train \
        --variant batch=16,attention=cudnn --variant batch=32,attention=cudnn,remat=1
    # CPU smoke (wall clock, tiny model):
    PYTHONPATH=. .venv/bin/python experiments/profile_train.py --smoke --out /tmp/ptrain

A variant is comma-separated key=value: batch (sequences per step), seq (tokens per sequence),
attention (xla | cudnn: the training forward's causal attention), remat (0 | 1), loss_chunk
(tokens per cross-entropy chunk, 0 = the whole [B, L, V] logits at once). Writes
<out>/train_profile.json after each variant: device and wall ms per step, MFU (6 N FLOPs per
token against the datasheet peak; `mfu_wall_palm` adds attention's FLOPs as PaLM counts them),
kernels per step, the kernels summed by kind (GEMM, attention, reduction, elementwise, other) and
the 30 costliest kernel names; and <out>/<label>_hlo.txt for
the first variant (the compiled step: match kernel names to fusions there).
"""

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("BENCH_TARGET_SECONDS", "0.5")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.bench_tree_attention import Timer
from experiments.profile_step import by_name
from specdec.attention import CAUSAL_ENV
from specdec.model import Transformer
from train.configs import attention_flops_per_token, get_config, matmul_params
from train.steps import ModelDef, init_state, make_train_step
from train.trainer import device_peak_flops

KINDS = (  # kernel kind -> substrings of CUPTI kernel names (first match wins)
    ("gemm", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "wgmma")),
    ("attention", ("sdpa", "fmha", "flash", "cudnn", "attention")),
    ("reduction", ("reduce",)),
    ("elementwise", ("loop_", "fusion", "convert", "copy", "transpose")),
)
DEFAULTS = dict(batch=16, seq=1024, attention="cudnn", remat=0, loss_chunk=0)


def parse_variant(text: str) -> dict:
    """'batch=32,remat=1' -> the DEFAULTS with those keys replaced (ints stay ints)."""
    out = dict(DEFAULTS)
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULTS:
            raise ValueError(f"variant item {item!r}: expected key=value, key in {list(DEFAULTS)}")
        out[key] = value if isinstance(DEFAULTS[key], str) else int(value)
    if out["attention"] not in ("xla", "cudnn"):
        raise ValueError(f"attention={out['attention']!r}: expected xla or cudnn")
    return out


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KINDS if any(k in low for k in keys)), "other")


@contextlib.contextmanager
def causal_attention_as(choice: str):
    """Run the training forward's causal attention through `choice` ("xla" / "cudnn"; read when
    a step is traced, so each step traced inside sees it); the previous setting is restored."""
    old = os.environ.get(CAUSAL_ENV)
    os.environ[CAUSAL_ENV] = choice
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(CAUSAL_ENV)
        else:
            os.environ[CAUSAL_ENV] = old


def train_setup(cfg, dtype, *, donate: bool, num_batches: int = 1):
    """The `cfg` model with random weights, its AdamW state, its jitted train step (donating the
    state if `donate`), `num_batches` batches of random tokens int32 [B, L + 1] and a learning
    rate: (step, state, batches, lr)."""
    module = Transformer(
        cfg.model,
        rngs=nnx.Rngs(0),
        param_dtype=jnp.float32,
        dtype=dtype,
        attention="xla",
        remat=cfg.remat,
    )
    model_def, params = ModelDef.split(module)
    state = init_state(params, cfg)
    step = jax.jit(make_train_step(model_def, cfg), donate_argnums=(0,) if donate else ())
    rng = np.random.default_rng(0)
    shape = (cfg.batch_size, cfg.seq_len + 1)
    tokens = [rng.integers(0, cfg.model.vocab_size, shape) for _ in range(num_batches)]
    batches = [jnp.asarray(t) for t in tokens]
    return step, state, batches, jnp.float32(1e-4)


def profile_variant(base_cfg, variant: dict, timer: Timer, dtype, hlo_path: Path | None) -> dict:
    """Device time, kernels by kind and by name of one train step of `variant`."""
    cfg = dataclasses.replace(
        base_cfg,
        batch_size=variant["batch"],
        seq_len=variant["seq"],
        remat=bool(variant["remat"]),
        loss_chunk=variant["loss_chunk"],
    )
    step, state, (tokens,), lr = train_setup(cfg, dtype, donate=False)  # the timer reuses them
    start = time.perf_counter()
    with causal_attention_as(variant["attention"]):
        compiled = step.lower(state, tokens, lr).compile()
    compile_s = time.perf_counter() - start
    if hlo_path is not None:
        hlo_path.write_text(compiled.as_text())
    timed = timer(compiled, [(state, tokens, lr)], min_reps=3, max_reps=50)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    flops = 6 * matmul_params(cfg.model) * tokens_per_step
    palm_flops = flops + attention_flops_per_token(cfg.model, cfg.seq_len) * tokens_per_step
    peak, source = device_peak_flops()
    breakdown = timed.get("breakdown", [])  # [(kernel name, ms)] in launch order
    kinds: dict[str, float] = {}
    for name, ms in breakdown:
        kinds[kind_of(name)] = kinds.get(kind_of(name), 0.0) + ms
    top = by_name([(name, ms * 1e3) for name, ms in breakdown])[:30]
    return dict(
        variant=variant,
        compile_s=compile_s,
        device_ms=timed["ms"],
        wall_ms=timed["wall_ms"],
        kernels=timed.get("kernels"),
        tokens_per_s=tokens_per_step / (timed["wall_ms"] / 1e3),
        mfu_wall=None if peak is None else flops / (timed["wall_ms"] / 1e3) / peak,
        mfu_device=None if peak is None else flops / (timed["ms"] / 1e3) / peak,
        mfu_wall_palm=None if peak is None else palm_flops / (timed["wall_ms"] / 1e3) / peak,
        peak_source=source,
        by_kind_ms={k: round(v, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        top_kernels=[
            dict(name=r["name"], launches=r["launches"], ms=round(r["us"] / 1e3, 4)) for r in top
        ],
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--deadline-s", type=float, default=None, help="skip variants after this")
    parser.add_argument("--smoke", action="store_true", help="tiny float32 model (CPU)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.smoke:
        base, dtype = get_config("tiny"), jnp.float32
        smoke = "batch=2,seq=32,attention=xla"
        texts = args.variant or [smoke, smoke + ",loss_chunk=16"]
    else:
        base, dtype = get_config("small"), jnp.bfloat16
        texts = args.variant or [""]
    variants = [parse_variant(t) for t in texts]  # all parsed before anything runs
    timer, rows = Timer(), []
    for i, variant in enumerate(variants):
        if args.deadline_s is not None and time.perf_counter() - started > args.deadline_s:
            print(f"deadline: skipped {texts[i:]}", file=sys.stderr)
            break
        label = "_".join(f"{k}{v}" for k, v in variant.items())
        try:
            row = profile_variant(
                base, variant, timer, dtype, args.out / f"{label}_hlo.txt" if i == 0 else None
            )
        except Exception as e:  # one failing variant (out of memory, say) must not stop the rest
            row = dict(variant=variant, error=f"{type(e).__name__}: {str(e)[:300]}")
        rows.append(row)
        (args.out / "train_profile.json").write_text(
            json.dumps(dict(timer=timer.method, device=str(jax.devices()[0]), rows=rows), indent=1)
        )
        brief = {k: row.get(k) for k in ("device_ms", "wall_ms", "kernels", "mfu_wall", "error")}
        print(label, json.dumps(brief), json.dumps(row.get("by_kind_ms")), file=sys.stderr)
        for top in row.get("top_kernels", [])[:12]:
            print(f"  {top['launches']:4d} x {top['ms']:8.3f} ms  {top['name']}", file=sys.stderr)


if __name__ == "__main__":
    main()
