"""Decode benchmark: plain and speculative tokens/s against the weight-bandwidth roofline.

    PYTHONPATH=. python experiments/bench_decode.py # Llama-3-8B shape, random bf16
    PYTHONPATH=. python experiments/bench_decode.py --target DIR --draft DIR2  # checkpoints

Measured in one process: HBM copy bandwidth (the roofline ceiling), then for each batch size plain
greedy decoding and each drafter x policy. Per-step decode time is isolated by timing two runs that
share one compiled loop (max_new_tokens N and N/2 + 1 are in one bucket) and dividing the time
difference by the step difference, so prefill and launch overheads cancel. The roofline for plain
decoding is weight bytes / measured bandwidth per step (KV bytes are added; they are small here).
Speedups are total tokens / total time, speculative against plain, at the same batch size.
"""

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import specdec
from drafters import DraftModel, EarlyExit, NGram
from specdec.config import llama3_8b_config, tiny_config
from trees import Chain, Static

STATIC_TREE = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0, 0]]


def measure_copy_bandwidth(num_bytes: int, reps: int = 20) -> float:
    """Bytes/s of a device-to-device copy, counting bytes read plus bytes written."""
    x = jnp.ones((num_bytes // 4,), jnp.float32)
    copy = jax.jit(lambda a: a * 1.0001)
    copy(x).block_until_ready()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        copy(x).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * num_bytes / float(np.median(times))


def build_target(args):
    if args.target:
        return specdec.load(args.target, dtype=args.dtype, attention=args.attention)
    cfg = llama3_8b_config() if args.config == "llama3-8b" else tiny_config(vocab_size=512)
    start = time.perf_counter()
    model = specdec.Model.random(
        cfg, seed=0, dtype=jnp.dtype(args.dtype or "bfloat16"), attention=args.attention
    )
    print(f"random {model} built in {time.perf_counter() - start:.1f}s", flush=True)
    return model


def build_draft(args, target):
    if args.draft:
        return specdec.load(args.draft, dtype=args.dtype, attention=args.attention)
    # A random 1.2B-parameter Llama-shaped drafter with the target's vocabulary.
    cfg = dataclasses.replace(
        target.config,
        num_layers=4,
        hidden_size=2048,
        intermediate_size=5632,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
    )
    if args.config == "tiny":
        cfg = dataclasses.replace(target.config, num_layers=1)
    return specdec.Model.random(cfg, seed=1, dtype=target.dtype, attention=args.attention)


def timed_step_seconds(
    model, prompts, max_new, repeats: int = 3, **kwargs
) -> tuple[float, specdec.GenerateOutput]:
    """Seconds per target forward, from pairs of runs (max_new and about half as many new tokens)
    sharing one compiled loop: the median over `repeats` pairs of their time difference divided
    by their difference in target forwards (prefill and per-call costs cancel)."""
    half = max_new // 2 + 1
    specdec.generate(model, prompts, max_new_tokens=max_new, **kwargs)  # compile + warm
    per_step = []
    for _ in range(repeats):
        full = specdec.generate(model, prompts, max_new_tokens=max_new, **kwargs)
        short = specdec.generate(model, prompts, max_new_tokens=half, **kwargs)
        steps = full.stats.target_forwards - short.stats.target_forwards
        per_step.append((full.stats.wall_seconds - short.stats.wall_seconds) / max(steps, 1))
    return float(np.median(per_step)), full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--target", default=None, help="checkpoint dir (default: random Llama-3-8B)"
    )
    parser.add_argument(
        "--draft", default=None, help="draft checkpoint dir (default: random 4-layer)"
    )
    parser.add_argument(
        "--config",
        default="llama3-8b",
        choices=["llama3-8b", "tiny"],
        help="random target shape when --target is not given (tiny: CPU smoke test)",
    )
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--attention", default="xla")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--max-new", type=int, default=256)
    parser.add_argument("--spec", action="store_true", help="also run drafter x policy rows")
    parser.add_argument(
        "--early-exit",
        type=int,
        nargs="*",
        default=[],
        help="also run EarlyExit(E) + Chain(4) rows, with and without verify reuse, per E",
    )
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()

    print(f"jax {jax.__version__}, device: {jax.devices()[0].device_kind}", flush=True)
    on_cpu = jax.devices()[0].platform == "cpu"
    bandwidth = measure_copy_bandwidth((64 << 20) if on_cpu else (4 << 30))
    print(f"HBM copy bandwidth: {bandwidth / 1e12:.2f} TB/s", flush=True)
    target = build_target(args)
    cfg = target.config
    weight_bytes = cfg.num_params() * jnp.dtype(target.dtype).itemsize
    spec_runs = []
    if args.spec:
        draft = build_draft(args, target)
        print(f"draft {draft}", flush=True)
        spec_runs = [
            ("DraftModel", DraftModel(draft), Chain(4)),
            ("DraftModel", DraftModel(draft), Static(STATIC_TREE)),
            ("NGram(3)", NGram(3), Chain(4)),
        ]
    for exit_layer in args.early_exit:
        for reuse in (True, False):
            name = f"EarlyExit({exit_layer}, reuse={reuse})"
            spec_runs.append((name, EarlyExit(exit_layer, reuse=reuse), Chain(4)))
    rng = np.random.default_rng(0)
    rows = []
    for batch in args.batch:
        prompts = rng.integers(0, cfg.vocab_size, (batch, args.prompt_len)).tolist()
        kv_bytes = (
            2
            * cfg.num_layers
            * batch
            * (args.prompt_len + args.max_new)
            * cfg.num_kv_heads
            * cfg.head_dim
            * jnp.dtype(target.dtype).itemsize
        )
        roofline_step = (weight_bytes + kv_bytes / 2) / bandwidth  # KV read averaged over the run
        step, plain = timed_step_seconds(target, prompts, args.max_new)
        row = dict(
            batch=batch,
            method="plain",
            policy="-",
            tau=1.0,
            step_ms=step * 1e3,
            decode_tok_s=batch / step,
            end_to_end_tok_s=plain.stats.tokens_per_second,
            roofline_tok_s=batch / roofline_step,
            pct_roofline=100 * roofline_step / step,
            speedup=1.0,
            compile_s=None,
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
        for name, drafter, policy in spec_runs:
            kw = dict(drafter=drafter, policy=policy)
            first = specdec.generate(target, prompts, max_new_tokens=args.max_new, **kw)
            out = specdec.generate(target, prompts, max_new_tokens=args.max_new, **kw)
            row = dict(
                batch=batch,
                method=name,
                policy=f"{type(policy).__name__}({policy.max_nodes - 1} drafts)",
                tau=out.stats.tau,
                step_ms=1e3 * out.stats.wall_seconds / max(out.stats.target_forwards, 1),
                decode_tok_s=None,
                end_to_end_tok_s=out.stats.tokens_per_second,
                roofline_tok_s=None,
                pct_roofline=None,
                speedup=out.stats.tokens_per_second / plain.stats.tokens_per_second,
                compile_s=first.stats.compile_seconds,
                # bf16: verify changes shapes and reduction order, so near-ties may flip.
                agreement_with_plain=float((out.tokens == plain.tokens).mean()),
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = format_table(rows, bandwidth, weight_bytes, jax.devices()[0].device_kind)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_decode.md"), "w") as f:
            f.write(table)


def format_table(rows, bandwidth, weight_bytes, device) -> str:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    lines = [
        f"device {device}; HBM copy {bandwidth / 1e12:.2f} TB/s; "
        f"weights {weight_bytes / 1e9:.2f} GB",
        "",
        "| B | method | policy | tau | ms/forward | decode tok/s | end-to-end tok/s | "
        "roofline tok/s | % roofline | speedup vs plain |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['method']} | {r['policy']} | {r['tau']:.2f} | "
            f"{r['step_ms']:.2f} | {fmt(r['decode_tok_s'], '.1f')} | "
            f"{r['end_to_end_tok_s']:.1f} | {fmt(r['roofline_tok_s'], '.1f')} | "
            f"{fmt(r['pct_roofline'], '.0f')} | {r['speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
