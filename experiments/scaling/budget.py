"""Experiment 1: acceptance and speedup against the target compute budget, every policy, T = 0 / 1.

    PYTHONPATH=. python -m experiments.scaling.budget --smoke            # tiny CPU pair, seconds
    PYTHONPATH=. python -m experiments.scaling.budget --out-dir $OUT     # GPU (trains `small`)

RSD's fixed-budget protocol: the budget is the verify forward's width (tree nodes, root
included), so policies are compared at equal target compute. One tree per policy and budget (no
search over shapes, which would multiply compiles):

    Chain      budget - 1 drafts in a row (while <= --max-depth); argmax at T = 0, sampled above
    Adaptive   a Thompson-sampled chain of at most budget - 1 drafts (same children as Chain)
    Static     w ranked chains from the root, w the smallest power of two with depth <= max
    RSD-C      the same shape, children drawn without replacement (T > 0 only)
    Dynamic    EAGLE-2 (depth --max-depth, top_k the smallest of 4 / 8 / 16 that reaches budget)
    Sequoia    the DP's tree for the per-rank acceptance measured at that temperature
    RSD-S      StochasticBeam(w, (budget - 1) / w), w as Static (T > 0 only)
    SpecExec   best-first, max_beams = min(32, budget / 4), branch width 8

The drafter is the pair's DraftModel. tau counts the bonus token; tokens/s are new tokens over
wall time (compilation excluded: one warm-up run, then the median of --repeats); speedup is
against plain decoding of the same target at the same temperature in the same process.
"""

import json
import re
import statistics
import sys
import time
from pathlib import Path

import specdec
from drafters import DraftModel
from experiments.scaling import common
from trees import (
    Adaptive,
    Chain,
    Dynamic,
    Sequoia,
    SpecExec,
    Static,
    StochasticBeam,
    measure_acceptance,
)

NAME = "budget"
POLICIES = ("Chain", "Adaptive", "Static", "RSD-C", "Dynamic", "Sequoia", "RSD-S", "SpecExec")
SAMPLED_ONLY = ("RSD-C", "RSD-S")  # at T = 0 they are Static and beam search


def chains(budget: int, width: int, children: str, max_depth: int) -> Static | None:
    """`width` chains from the root sharing budget - 1 nodes (None if deeper than max_depth)."""
    lengths = [(budget - 1) // width + (i < (budget - 1) % width) for i in range(width)]
    if min(lengths) < 1 or max(lengths) > max_depth:
        return None
    return Static([[i] + [0] * d for i in range(width) for d in range(lengths[i])], children)


def _width(budget: int, max_depth: int) -> int:
    width = 1
    while (budget - 1 + width - 1) // width > max_depth:
        width *= 2
    return width


def policy_for(name: str, budget: int, temperature: float, acceptance, max_depth: int):
    """The policy `name` at `budget` nodes (None where the family cannot be built that size)."""
    chain_children = "top" if temperature == 0 else "sample"
    ranked = "top" if temperature == 0 else "sample_without_replacement"
    width = _width(budget, max_depth)
    if name in ("Chain", "Adaptive"):
        if not 1 <= budget - 1 <= max_depth:
            return None
        if name == "Chain":
            return Chain(budget - 1, chain_children)
        return Adaptive(depth=budget - 1, children=chain_children)
    if name in ("Static", "RSD-C"):
        children = "top" if name == "Static" else "sample_without_replacement"
        return chains(budget, width, children, max_depth)
    if name == "Dynamic":
        for k in (4, 8, 16):
            if budget <= 1 + k + (max_depth - 1) * k * k:
                return Dynamic(depth=max_depth, top_k=k, total_tokens=budget)
        return None
    if name == "Sequoia":
        return Sequoia(budget, tuple(acceptance), ranked, depth=max_depth)
    if name == "RSD-S":
        depth = (budget - 1) // width
        return StochasticBeam(width, depth) if depth >= 1 else None
    if name == "SpecExec":
        return SpecExec(budget, max_beams=min(32, max(1, budget // 4)), max_branch_width=8)
    raise ValueError(f"unknown policy {name!r}; known: {POLICIES}")


def timed(target, ids, repeats: int, **kwargs) -> tuple[specdec.GenerateOutput, float, float]:
    """(last output, median tokens/s, compile seconds) after one warm-up run."""
    eos = target.tokenizer.eos_token_ids
    first = specdec.generate(target, ids, eos_token_id=eos, seed=0, **kwargs)
    runs = [
        specdec.generate(target, ids, eos_token_id=eos, seed=1 + r, **kwargs)
        for r in range(repeats)
    ]
    speed = statistics.median(r.stats.tokens_per_second for r in runs)
    return runs[-1], speed, first.stats.compile_seconds


def run(pair: common.Pair, args) -> common.Recorder:
    ids = common.prompts(pair.target.tokenizer, args.prompts)
    meta = common.metadata(
        pair,
        args,
        drafter="DraftModel",
        batch=len(ids),
        temperatures=args.temperatures,
        budgets=args.budgets,
        max_depth=args.max_depth,
        repeats=args.repeats,
    )
    rec = common.Recorder(NAME, args, meta)
    drafter = DraftModel(pair.draft)
    for temperature in args.temperatures:
        sampling = dict(max_new_tokens=args.max_new, temperature=temperature)
        plain, plain_speed, _ = timed(pair.target, ids, args.repeats, **sampling)
        ranked = "top" if temperature == 0 else "sample_without_replacement"
        acceptance = measure_acceptance(
            pair.target, drafter, ids, width=8, children=ranked, **sampling
        )
        rec.data.setdefault("acceptance", {})[str(temperature)] = list(acceptance)
        rec.data.setdefault("plain", {})[str(temperature)] = {
            "tokens_per_s": plain_speed,
            "new_tokens": plain.stats.new_tokens,
        }
        for budget in args.budgets:
            for name in args.policies:
                if temperature == 0 and name in SAMPLED_ONLY:
                    continue
                if rec.time_left() < 0:
                    print(f"deadline: skipping T={temperature} budget {budget} {name}")
                    continue
                policy = policy_for(name, budget, temperature, acceptance, args.max_depth)
                if policy is None:
                    continue
                start = time.perf_counter()
                out, speed, compile_s = timed(
                    pair.target, ids, args.repeats, drafter=drafter, policy=policy, **sampling
                )
                check = {}
                if temperature == 0:  # greedy: every policy must reproduce plain decoding
                    same = greedy_matches(out, plain)
                    if args.smoke and same != len(ids):  # float32: exact, so a mismatch is a bug
                        raise RuntimeError(
                            f"{policy!r}: greedy output differs from plain decoding on "
                            f"{len(ids) - same} of {len(ids)} prompts in float32 "
                            "(a losslessness bug)"
                        )
                    check = {"greedy_eq_plain": f"{same}/{len(ids)}"}
                rec.add(
                    {
                        "temperature": temperature,
                        "budget": budget,
                        "policy": name,
                        "nodes": policy.max_nodes,
                        "depth": policy.max_depth,
                        "config": repr(policy)[:120],
                        "tau": out.stats.tau,
                        "acceptance_by_depth": list(out.stats.acceptance_by_depth),
                        "target_forwards": out.stats.target_forwards,
                        "new_tokens": out.stats.new_tokens,
                        "tokens_per_s": speed,
                        "speedup": speed / plain_speed,
                        "compile_s": compile_s,
                        "row_s": time.perf_counter() - start,
                        **check,
                    }
                )
    return rec


def greedy_matches(out, plain) -> int:
    """Sequences of `out` equal to plain decoding's. At T = 0 all should be (bf16 near-ties can
    flip a few; far fewer is a bug: SpecExec's 4- and 8-node rows of the H200 run were one)."""
    return sum(a == b for a, b in zip(out.sequences(), plain.sequences(), strict=True))


def build_parser():
    p = common.parser(__doc__, prompts=16, max_new=128, deadline_s=560.0)
    p.add_argument("--budgets", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64, 128])
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    p.add_argument("--max-depth", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (median)")
    return p


def main(argv=None) -> common.Recorder:
    args = build_parser().parse_args(argv)
    if args.smoke:
        common.use_cpu_flags()
        # Two families (the DP's static tree, stochastic beam) keep the smoke to 9 compiles;
        # tests/test_scaling.py builds every family at every GPU budget without decoding.
        args.budgets, args.max_depth, args.repeats = [4, 8], 3, 1
        args.policies = ["Sequoia", "RSD-S"]
    args = common.finish_args(args, prompts=2, max_new=16)
    return run(common.get_pair(args), args)


def smoke() -> common.Recorder:
    return main(["--smoke"])


# gpu_speculation.py's policies runs: results key -> (drafter, its training entry, result part)
POLICY_RUNS = {
    "policies": ("DraftModel", "draft", None),
    "policies_eagle3": ("EAGLE-3", "eagle3", "eagle3"),
}


def from_policy_run(
    spec_json: str | Path, out_dir: str | Path | None = None, key: str = "policies"
) -> Path:
    """Write this experiment's GPU result file from a `gpu_speculation.py --phases policies` run
    (`experiments/bench_policies.compare_policies`: the same fixed-budget protocol, best variant
    per family by tau, no Adaptive rows), for the notebook. `key` picks the run: the pair's
    ("policies": budget.json) or the EAGLE-3 head's ("policies_eagle3": the part
    budget-eagle3.json, on that run's own target). Rows carry their drafter. Returns the file."""
    if key not in POLICY_RUNS:
        raise ValueError(f"key must be one of {sorted(POLICY_RUNS)}, got {key!r}")
    drafter, trained, part = POLICY_RUNS[key]
    run = json.loads(Path(spec_json).read_text())
    training = run["training"]

    def model(summary: str) -> dict:
        params = re.search(r"params ([\d.]+)M", summary)
        tokens = re.search(r"([\d.]+)M tokens", summary)
        ppl = re.search(r"held-out loss [\d.]+ \(ppl ([\d.]+)", summary)
        return {
            "params": int(float(params.group(1)) * 1e6),
            "train_tokens": int(float(tokens.group(1)) * 1e6),
            "heldout_ppl": float(ppl.group(1)),
            "summary": summary,
        }

    devices, device = run["device"].split(" x ", 1)
    settings = run["env"]["settings"]
    rows = [dict(r, drafter=drafter) for r in run[key]["rows"]]
    # Runs before the phase saved its protocol used these settings (4 held-out ShareGPT prompts
    # decoded as one batch, 64 new tokens, depth <= 8).
    protocol = run[key].get("protocol") or dict(prompts=4, batch=4, max_new=64, max_depth=8)
    models = {"target": model(training["target"])}
    # A trained LM's summary has params / tokens / ppl; an EAGLE head's only its own numbers.
    summary = training[trained]
    models[trained] = model(summary) if trained == "draft" else {"summary": summary}
    meta = {
        "models": models,
        "data": common.DATA,
        "hardware": {"platform": "gpu", "device": device, "devices": int(devices)},
        "smoke": False,
        "source": f"{spec_json}, {key} (experiments/gpu_speculation.py --phases policies)",
        "versions": run["env"]["versions"],
        "prompts": protocol["prompts"],
        "max_new_tokens": protocol["max_new"],
        "drafter": drafter,
        "batch": protocol["batch"],
        "temperatures": sorted({r["temperature"] for r in rows}),
        "budgets": sorted({r["budget"] for r in rows}),
        "max_depth": protocol["max_depth"],
        "settings": settings,
    }
    data = {"experiment": NAME, "smoke": False, "meta": meta, "rows": rows,
            "acceptance": run[key]["acceptance"]}  # fmt: skip
    path = common.result_path(NAME, False, out_dir, part)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


if __name__ == "__main__":
    if sys.argv[1:2] == ["--from-policy-run"]:  # ... --from-policy-run SPEC_JSON [KEY]
        print(from_policy_run(sys.argv[2], key=sys.argv[3] if len(sys.argv) > 3 else "policies"))
    else:
        main(sys.argv[1:])
