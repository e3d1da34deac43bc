"""Where a decode step's time goes: every kernel of one step, in launch order, and the optimised
HLO of the compiled loop (what XLA fused), for the random `small` or Llama-3-8B shape; plain
decoding, or a speculative step (`--drafter self`: the target drafting for itself, every draft
accepted at T = 0; `--drafter ngram`; `--drafter quantspec` / `quantspec4`: QuantSpec, with the
target's or 4-bit weights, which needs `--kv-cache int8-hierarchical`) with Chain(--depth).

    # on the GPU machine (CUPTI through bench_tree_attention.Timer):
    PYTHONPATH=. python3 experiments/profile_step.py --model small --batch 1 --out $OUT/prof
    # CPU smoke (wall clock, tiny model):
    PYTHONPATH=. .venv/bin/python experiments/profile_step.py --smoke --out /tmp/prof

Writes <out>/<label>.json: device and wall ms per step, kernels per step, the kernels of one step
in launch order (name, us) and a per-name summary; and <out>/<label>_hlo.txt, the loop's optimised
HLO (the while body's fusions are the step's kernels). One step's kernels: a window of
`kernels_per_step` launches from the middle of the longer loop's steps. `by_phase` sums them by
the loop's named scope (draft, verify_forward, verify_walk, commit, observe) that the HLO's
metadata gives each fusion; custom kernels (Pallas attention) have no instruction name to match
and are listed by their own names. `by_phase_mean` is the same per step over every launch of the
two runs (right where steps differ, e.g. the quantised cache's occasional flush); `--wall` times
without CUPTI, whose tracing slows the host. Under command buffers (`specdec.xla_flags`, the
default on a GPU) CUPTI lists every kernel of the loop's CUDA graph twice (run 9: 379 kernels and
0.709 ms for a `small` step of 188 kernels, 0.351 ms without graphs): take kernel breakdowns with
SPECDEC_COMMAND_BUFFERS=0, wall times with the default.
"""

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("BENCH_TARGET_SECONDS", "0.1")

import jax
import numpy as np

import specdec
from drafters import DraftModel, Eagle, NGram, QuantSpec
from experiments.bench_tree_attention import Timer
from specdec.config import llama3_8b_config, tiny_config
from specdec.engine.generate import prepare
from specdec.engine.loop import decode_loop
from train.configs import get_config
from trees import Chain

PHASES = ("draft", "verify_forward", "verify_walk", "commit", "observe")
_NAME = re.compile(r"^\s+%([\w.\-]+) = ")
_SCOPE = re.compile(r'op_name="[^"]*?/while/body/([a-z_]+)')
_CALLS = re.compile(r"calls=%([\w.\-]+)")


def config_for(name: str, smoke: bool):
    if smoke:
        return tiny_config(vocab_size=512, num_layers=2)
    return {"small": lambda: get_config("small").model, "8b": llama3_8b_config}[name]()


def by_name(kernels: list[tuple[str, float]]) -> list[dict]:
    """Launches and microseconds per kernel name, costliest first."""
    totals: dict[str, list[float]] = {}
    for name, us in kernels:
        entry = totals.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += us
    rows = [dict(name=n, launches=c, us=round(t, 2)) for n, (c, t) in totals.items()]
    return sorted(rows, key=lambda r: -r["us"])


def instruction_phases(hlo: str) -> dict[str, str]:
    """Kernel name as CUPTI reports it (the HLO instruction's name with '.' -> '_', cut to 48
    characters) -> the loop-step phase its op_name metadata names ("other" outside PHASES). A
    fusion whose own metadata names no op takes the first phase named inside the computation it
    calls."""
    scopes: dict[str, str] = {}  # computation -> first while-body scope named inside it
    computation = None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            computation = line.split()[0].lstrip("%")
        elif computation and computation not in scopes and (m := _SCOPE.search(line)):
            scopes[computation] = m.group(1)
    phases = {}
    for line in hlo.splitlines():
        if not (m := _NAME.match(line)):
            continue
        scope = _SCOPE.search(line) if "op_name=" in line else None
        called = _CALLS.search(line)
        name = scope.group(1) if scope else scopes.get(called.group(1)) if called else None
        if name is not None or called is not None:
            phases[m.group(1).replace(".", "_")[:48]] = name if name in PHASES else "other"
    return phases


def by_phase(step: list[tuple[str, float]], phases: dict[str, str]) -> dict[str, dict]:
    """Launches and microseconds of one step's kernels per phase; kernels with no instruction
    of that name (custom calls such as Pallas kernels) are grouped under their own names."""
    totals: dict[str, dict] = {}
    for name, us in step:
        entry = totals.setdefault(phases.get(name, name), {"kernels": 0, "us": 0.0})
        entry["kernels"] += 1
        entry["us"] = round(entry["us"] + us, 2)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]["us"]))


def mean_by_phase(
    full: list[tuple[str, float]],
    half: list[tuple[str, float]],
    steps: int,
    phases: dict,
    half_phases: dict | None = None,
) -> dict[str, dict]:
    """Kernels and microseconds per step of each phase, from every launch of the two runs (the
    longer's minus the shorter's, over the `steps` steps between them): unlike the one-step window,
    right when steps differ (a `lax.cond` that runs now and then, such as the quantised cache's
    flush of a completed group). `half_phases`: the shorter run's map when it ran another
    executable (default `phases`)."""
    a, b = by_phase(full, phases), by_phase(half, phases if half_phases is None else half_phases)
    out = {}
    for name in a.keys() | b.keys():
        x, y = a.get(name, {"kernels": 0, "us": 0.0}), b.get(name, {"kernels": 0, "us": 0.0})
        if x == y:  # outside the steps (prefill, loop exit)
            continue
        out[name] = {
            "kernels": round((x["kernels"] - y["kernels"]) / steps, 2),
            "us": round((x["us"] - y["us"]) / steps, 2),
        }
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["us"]))


def steady_step(ordered: list, outside: int, steps: int, per_step: int) -> list:
    """One steady step's launches out of a loop run's ordered launches: `outside` kernels are
    not steps' (prefill and loop exit, known from the two runs' difference), `steps` steps of
    `per_step` launches each. The window starts at the middle step after the prefill; it is that
    step rotated by however many of the `outside` kernels come after the loop (none or a few)."""
    start = max(outside, 0) + (steps // 2) * per_step
    return ordered[start : start + per_step]


def loop_runs(model, prompts, new: int, timer: Timer, *, max_reps: int = 400, **kwargs):
    """The decode loop timed at `new` and `new // 2 + 1` new tokens, one compiled executable per
    loop shape (the two share one when the buckets agree, so prefill and launch costs cancel in
    the difference): ([(steps, timing, the executable's optimised HLO text)] for the two runs,
    [a digest of each run's token history])."""
    runs, executables, digests = [], {}, []  # executables: shape -> (compiled, its HLO text)
    for max_new in (new, new // 2 + 1):
        prepared = prepare(model, prompts, max_new_tokens=max_new, **kwargs)
        if prepared.shape not in executables:  # not donating: the timer reuses the arguments
            loop = jax.jit(lambda *a, p=prepared: decode_loop(*a, policy=p.policy, shape=p.shape))
            compiled = loop.lower(*prepared.args).compile()
            executables[prepared.shape] = (compiled, compiled.as_text())
        run, hlo = executables[prepared.shape]
        output = run(*prepared.args)
        steps, history = int(output.steps), np.asarray(output.history)
        digests.append(hashlib.sha256(history.tobytes()).hexdigest()[:16])
        runs.append((steps, timer(run, [prepared.args], max_reps=max_reps), hlo))
    return runs, digests


def profile(model, prompts, new: int, timer: Timer, **kwargs) -> tuple[dict, str]:
    """Per-step device / wall time and kernels, the ordered kernels of one steady step (by name
    and by phase), and the compiled loop's HLO text (`loop_runs`)."""
    ((s_full, full, hlo), (s_half, half, hlo_half)), digests = loop_runs(
        model, prompts, new, timer, max_reps=20, **kwargs
    )
    steps = max(s_full - s_half, 1)
    out = dict(
        method=timer.method,
        steps=[s_full, s_half],
        history_sha256=digests,  # the two runs' token histories: equal across flags if lossless
        device_ms_per_step=(full["ms"] - half["ms"]) / steps,
        wall_ms_per_step=(full["wall_ms"] - half["wall_ms"]) / steps,
    )
    if "kernels" in full:
        per_step = round((full["kernels"] - half["kernels"]) / steps)
        out["kernels_per_step"] = (full["kernels"] - half["kernels"]) / steps
        ordered = [(name, 1e3 * ms) for name, ms in full["breakdown"]]
        outside = len(half["breakdown"]) - s_half * per_step
        step = steady_step(ordered, outside, s_full, per_step)
        out["one_step"] = [dict(name=n, us=round(us, 2)) for n, us in step]
        out["one_step_us"] = sum(us for _, us in step)
        out["by_name"] = by_name(step)
        phases = instruction_phases(hlo)
        out["by_phase"] = by_phase(step, phases)
        halves = [(name, 1e3 * ms) for name, ms in half["breakdown"]]
        # each run's kernels named by its own executable (fusion numbers differ between two)
        out["by_phase_mean"] = mean_by_phase(
            ordered, halves, steps, phases, instruction_phases(hlo_half)
        )
    return out, hlo


def untrained_eagle3(target) -> Eagle:
    """A random one-layer EAGLE-3 head with min(32k, V / 4) draft tokens: the published
    Llama-3-8B heads' configuration (32k of 128k), the same quarter on smaller vocabularies."""
    vocab = target.config.vocab_size
    return Eagle.random(target, version=3, draft_vocab=min(32768, vocab // 4))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("small", "8b"), default="small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new", type=int, default=32, help="new tokens of the longer loop")
    parser.add_argument("--attention", default="auto")
    parser.add_argument(
        "--drafter",
        choices=("none", "self", "ngram", "quantspec", "quantspec4", "eagle3"),
        default="none",
        help="eagle3: an untrained one-layer EAGLE-3 head, draft vocabulary min(32k, V / 4)",
    )
    parser.add_argument(
        "--kv-cache",
        choices=("default", "int8-hierarchical"),
        default="default",
        help="the cache mode (quantspec drafters need int8-hierarchical)",
    )
    parser.add_argument("--depth", type=int, default=4, help="Chain depth with a drafter")
    parser.add_argument("--label", default=None, help="output name (default: model_bB)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny float32 model (CPU)")
    parser.add_argument("--steps-per-sync", type=int, default=1, help="generate's steps_per_sync")
    parser.add_argument(
        "--wall",
        action="store_true",
        help="wall clock only, no CUPTI (which slows the host: a step's wall time under it is "
        "not the time without a profiler)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    label = args.label or f"{args.model}_b{args.batch}" + (
        "" if args.drafter == "none" else f"_{args.drafter}_chain{args.depth}"
    ) + ("" if args.kv_cache == "default" else "_int8kv")
    cfg = config_for(args.model, args.smoke)
    dtype = "float32" if args.smoke else "bfloat16"
    start = time.perf_counter()
    model = specdec.Model.random(cfg, seed=0, dtype=dtype, attention=args.attention)
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, cfg.vocab_size, (args.batch, args.prompt_len)).tolist()
    speculative = dict(steps_per_sync=args.steps_per_sync)
    if args.kv_cache != "default":
        speculative["kv_cache"] = args.kv_cache
    if args.drafter != "none":
        drafter = {
            "self": lambda: DraftModel(model),
            "ngram": lambda: NGram(3),
            "quantspec": QuantSpec,
            "eagle3": lambda: untrained_eagle3(model),
            "quantspec4": lambda: QuantSpec.with_int4_weights(
                model, group=32 if args.smoke else 128
            ),
        }[args.drafter]()
        speculative.update(drafter=drafter, policy=Chain(args.depth))
    timer = Timer()
    if args.wall:
        timer.ext, timer.method = None, "wall"
    result, hlo = profile(model, prompts, args.new, timer, **speculative)
    result.update(
        label=label,
        model=str(model),
        batch=args.batch,
        prompt_len=args.prompt_len,
        drafter=args.drafter,
        kv_cache=args.kv_cache,
        steps_per_sync=args.steps_per_sync,
        depth=args.depth if args.drafter != "none" else 0,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        device=str(jax.devices()[0]),
        jax=jax.__version__,
        seconds=time.perf_counter() - start,
    )
    (args.out / f"{label}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{label}_hlo.txt").write_text(hlo)
    summary = {k: result.get(k) for k in ("device_ms_per_step", "wall_ms_per_step")}
    summary["kernels_per_step"] = result.get("kernels_per_step")
    print(label, json.dumps(summary), file=sys.stderr)
    for phase, row in result.get("by_phase_mean", {}).items():
        print(f"  {phase}: {row['kernels']} kernels, {row['us']:.1f} us", file=sys.stderr)
    for row in result.get("by_name", [])[:25]:
        print(f"  {row['launches']:4d} x {row['us']:8.1f} us  {row['name']}", file=sys.stderr)


if __name__ == "__main__":
    main()
