"""Tree policies at fixed target budgets (issue 13): tau, verify time, tokens/s and speedup.

    PYTHONPATH=. python experiments/bench_policies.py                        # tiny pair, CPU
    PYTHONPATH=. python experiments/bench_policies.py --target DIR --draft DIR2 \
        --budgets 8 16 32 64 128 --specexec 256 512 1024                     # GPU

The budget is the verify forward's width (tree nodes, root included); every policy is built to it
or to the largest tree of its shape family that fits (the `nodes` column says which):

    Chain        budget - 1 drafts in a row (only while that is <= --max-depth), sampled at T > 0
    Static       the best "w chains from the root" tree (w = 1, 2, 4, 8), ranked children
    Dynamic      EAGLE-2 (depth --max-depth, top_k 4 or 8, total_tokens = budget)
    Sequoia      the DP's tree for the acceptance measured at that temperature (depth <= max;
                 ranked children at T = 0, drawn without replacement otherwise)
    RSD-C        the best "w chains" tree with children drawn without replacement
    RSD-S        StochasticBeam(w, d), 1 + w d <= budget, the best w in (1, 2, 4, 8)
    SpecExec     best-first, max_beams = min(32, budget / 4), max_branch_width 8

"best" = highest tau at that temperature. Verify time per budget is a step with a free drafter
(zero logits, no forward) on a tree of that size, so it is the target forward plus the step's
fixed work. tokens/s are new tokens over wall time (compilation excluded, one warm-up run first);
speedup is against plain decoding at the same temperature.
"""

import argparse
import collections
import concurrent.futures
import functools
import json
import os
import time

import jax

import specdec
from drafters import DraftModel
from experiments.ceilings import H200_BF16_FLOPS, H200_BYTES_PER_S
from trees import Chain, Dynamic, Sequoia, SpecExec, Static, StochasticBeam, measure_acceptance
from trees.measure import measure_verify_seconds

WIDTHS = (1, 2, 4, 8)

# jax's persistent compilation cache events in this process (hits / misses), for the warm-up line:
# on the H200 a second call recompiled a grid the first had cached in almost the same time.
CACHE_EVENTS: collections.Counter = collections.Counter()
jax.monitoring.register_event_listener(
    lambda event, **_: (
        CACHE_EVENTS.update([event.rsplit("/", 1)[-1]])
        if event.startswith("/jax/compilation_cache/")
        else None
    )
)


def chains(budget: int, width: int, children: str, max_depth: int):
    """`width` chains from the root sharing budget - 1 nodes (None if deeper than max_depth)."""
    lengths = [(budget - 1) // width + (i < (budget - 1) % width) for i in range(width)]
    if min(lengths) < 1 or max(lengths) > max_depth:
        return None
    return Static([[i] + [0] * d for i in range(width) for d in range(lengths[i])], children)


def candidates(name: str, budget: int, depth: int, widths, acceptance, children: str) -> list:
    if name == "Chain":
        mode = "top" if children == "top" else "sample"  # sampled: Leviathan / Chen
        return [Chain(budget - 1, mode)] if budget - 1 <= depth else []
    if name in ("Static", "RSD-C"):
        children = "top" if name == "Static" else "sample_without_replacement"
        return [p for w in widths if (p := chains(budget, w, children, depth)) is not None]
    if name == "Dynamic":
        for k in (4, 8, 16):
            if budget <= 1 + k + (depth - 1) * k * k:
                return [Dynamic(depth=depth, top_k=k, total_tokens=budget)]
        return []
    if name == "Sequoia":
        return [Sequoia(budget, acceptance, children, depth=depth)]
    if name == "RSD-S":
        return [StochasticBeam(w, min(depth, (budget - 1) // w)) for w in widths if budget - 1 >= w]
    if name == "SpecExec":
        return [SpecExec(budget, max_beams=min(32, max(1, budget // 4)), max_branch_width=8)]
    raise ValueError(name)


def run(target, prompts, max_new, eos, **kwargs) -> specdec.GenerateOutput:
    specdec.generate(target, prompts, max_new_tokens=max_new, eos_token_id=eos, seed=0, **kwargs)
    return specdec.generate(
        target, prompts, max_new_tokens=max_new, eos_token_id=eos, seed=1, **kwargs
    )


def warm_up(calls, workers: int, deadline: float = float("inf")) -> float:
    """Run every `calls` thunk once (compiling its decode loop) on `workers` threads; seconds.
    The timed runs then reuse the compiled loops. Calls not started by `deadline` are skipped.
    Measured on the H200: 31 loops in 332 s on 8 threads (10.7 s each), little better than
    ~12-15 s one by one, so the GPU's compiles barely overlap; on a CPU they do."""
    start = time.perf_counter()

    def call_unless_late(call):
        if time.perf_counter() < deadline:
            call()

    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        for future in [pool.submit(call_unless_late, call) for call in calls]:
            future.result()  # re-raises a failed compile here
    return time.perf_counter() - start


def verify_roofline_ms(target, nodes: int, context: int, ceiling_bytes_s: float, peak_flops: float):
    """Lower bound of one verify forward of `nodes` tokens at `context` cached tokens: the larger
    of reading the weights + the cache once at `ceiling_bytes_s` and 2 N nodes FLOPs at
    `peak_flops` (attention FLOPs over the context included)."""
    cfg = target.config
    leaves = jax.tree.leaves(target.net)
    weight_bytes = sum(x.size * x.dtype.itemsize for x in leaves)
    params = sum(x.size for x in leaves) - cfg.vocab_size * cfg.hidden_size * (
        0 if cfg.tie_word_embeddings else 1
    )  # the input embedding is a lookup
    kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim
    kv_bytes = kv * (context + nodes) * leaves[0].dtype.itemsize
    attn_flops = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * nodes * (context + nodes)
    flops = 2 * params * nodes + attn_flops
    return 1e3 * max((weight_bytes + kv_bytes) / ceiling_bytes_s, flops / peak_flops)


def table(rows) -> str:
    lines = [
        "| T | budget | policy | nodes | tau | verify ms | roofline ms | tok/s | speedup |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['temperature']:g} | {r['budget']} | {r['policy']} | {r['nodes']} | {r['tau']:.2f} "
        f"| {r['verify_ms']:.3f} | {r['roofline_ms']:.3f} | {r['tokens_per_s']:,.1f} "
        f"| {r['speedup']:.2f}x |"
        for r in rows
    ]
    return "\n".join(lines)


def compare_policies(
    target,
    drafter,
    prompts,
    *,
    budgets=(8, 16, 32),
    specexec=(),
    temperatures=(0.0, 1.0),
    max_depth: int = 8,
    max_new: int = 64,
    widths=WIDTHS,
    deadline: float = float("inf"),
    ceiling_bytes_s: float = H200_BYTES_PER_S,
    peak_flops: float = H200_BF16_FLOPS,
    on_rows=lambda rows, table: None,
    rows=None,
    compile_workers: int = 1,
) -> dict:
    """Every policy at every budget and temperature (see the module docstring); returns
    {"rows": [...], "table": markdown, "acceptance": {T: per-rank acceptance}}. Rows already in
    `rows` (a previous, cut-off call) are kept and not rerun. The verify time of a budget is
    measured once (greedy, a free drafter on the Sequoia tree) and shared by both temperatures.
    compile_workers > 1 compiles each temperature's grid on that many threads first (`warm_up`)."""
    eos = target.tokenizer.eos_token_ids
    context = max(len(p) for p in prompts) + max_new // 2  # the mean cache length, roughly
    rows, acceptances, verify_s = list(rows or []), {}, {}
    have = {(r["temperature"], r["budget"], r["policy"]) for r in rows}
    verify_s.update({r["budget"]: r["verify_ms"] / 1e3 for r in rows})
    for temperature in temperatures:
        if time.perf_counter() > deadline:
            print(f"deadline: skipping T={temperature}", flush=True)
            break
        sampling = dict(temperature=temperature)
        plain = run(target, prompts, max_new, eos, **sampling)
        children = "top" if temperature == 0 else "sample_without_replacement"
        acceptance = measure_acceptance(
            target, drafter, prompts, width=8, children=children, max_new_tokens=max_new,
            **sampling,
        )  # fmt: skip
        acceptances[temperature] = list(acceptance)
        print(f"T={temperature}: plain {plain.stats.summary()}; acceptance {acceptance}")
        grid = []  # (budget, name, candidates) still to run at this temperature
        for budget in sorted({*budgets, *specexec}):
            names = ["SpecExec"]
            if budget in budgets:
                names = ["Chain", "Static", "Dynamic", "Sequoia", "RSD-C", "RSD-S", "SpecExec"]
            names = [n for n in names if (temperature, budget, n) not in have]
            if temperature == 0:  # ranked at temperature 0: the same trees as Static / beam search
                names = [n for n in names if n not in ("RSD-C", "RSD-S")]
            grid += [(budget, n, candidates(n, budget, max_depth, widths, acceptance, children))
                     for n in names]  # fmt: skip
        if compile_workers > 1 and any(policies for _, _, policies in grid):
            specdec.compiled_cache_size(max(specdec.compiled_cache_size(), 256))  # keep them all
            calls = [
                functools.partial(
                    run, target, prompts, max_new, eos, **sampling, drafter=drafter, policy=policy
                )
                for _, _, policies in grid
                for policy in policies
            ]
            calls += [
                functools.partial(measure_verify_seconds, target, prompts, b, acceptance)
                for b in sorted({b for b, _, _ in grid} - set(verify_s))
            ]
            seconds = warm_up(calls, compile_workers, deadline)
            print(f"  compiled {len(calls)} loops on {compile_workers} threads in {seconds:.1f}s "
                  f"(persistent cache: {CACHE_EVENTS['cache_hits']} hits, "
                  f"{CACHE_EVENTS['cache_misses']} misses so far)", flush=True)  # fmt: skip
        for budget in sorted({b for b, _, _ in grid}):
            if time.perf_counter() > deadline:
                print(f"deadline: skipping budget {budget} at T={temperature}", flush=True)
                break
            if budget not in verify_s:
                verify_s[budget] = measure_verify_seconds(target, prompts, budget, acceptance)
            verify = verify_s[budget]
            for _, name, policies in [g for g in grid if g[0] == budget]:
                best = None
                for policy in policies:
                    out = run(target, prompts, max_new, eos, drafter=drafter, policy=policy,
                              **sampling)  # fmt: skip
                    if best is None or out.stats.tau > best[1].stats.tau:
                        best = (policy, out)
                if best is None:
                    continue
                policy, out = best
                row = dict(
                    temperature=temperature,
                    budget=budget,
                    policy=name,
                    nodes=policy.max_nodes,
                    config=repr(policy)[:80],
                    tau=out.stats.tau,
                    verify_ms=verify * 1e3,
                    roofline_ms=verify_roofline_ms(
                        target, budget, context, ceiling_bytes_s, peak_flops
                    ),
                    tokens_per_s=out.stats.tokens_per_second,
                    speedup=out.stats.tokens_per_second / plain.stats.tokens_per_second,
                )
                rows.append(row)
                on_rows(rows, table(rows))
                print(
                    f"  T={temperature} budget {budget:5d} {name:9s} nodes {row['nodes']:5d} "
                    f"tau {row['tau']:.2f} verify {row['verify_ms']:.2f} ms (roofline "
                    f"{row['roofline_ms']:.3f}) {row['tokens_per_s']:.1f} tok/s "
                    f"{row['speedup']:.2f}x",
                    flush=True,
                )
    return {"rows": rows, "table": table(rows), "acceptance": acceptances}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default=None, help="checkpoint dir (default: tiny pair)")
    parser.add_argument("--draft", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--attention", default="xla")
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--specexec", type=int, nargs="*", default=[], help="extra budgets")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--max-depth", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new", type=int, default=64)
    parser.add_argument("--compile-workers", type=int, default=1, help="threads compiling")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()

    from experiments.demo import pick_prompts  # the demo's held-out chat + HumanEval prompts
    from train.reference import reference_pair

    target_dir, draft_dir = (
        (args.target, args.draft) if args.target else reference_pair("tiny", progress=True)
    )
    load = lambda d: specdec.load(d, dtype=args.dtype, attention=args.attention)
    target, draft = load(target_dir), load(draft_dir)
    _, prompts = pick_prompts(target.tokenizer, n_chat=max(1, args.prompts - 1))
    result = compare_policies(
        target,
        DraftModel(draft),
        prompts,
        budgets=args.budgets,
        specexec=args.specexec,
        temperatures=args.temperatures,
        max_depth=args.max_depth,
        max_new=args.max_new,
        compile_workers=args.compile_workers,
    )
    print(result["table"])
    if args.out:
        with open(os.path.join(args.out, "bench_policies.md"), "w") as f:
            f.write(result["table"] + "\n")
        with open(os.path.join(args.out, "bench_policies.json"), "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
