"""The verify walk alone: the point-mass walk (no loop) against the candidate loop, per tree size.

    PYTHONPATH=. python experiments/bench_verify.py --smoke     # small shapes, any backend
    PYTHONPATH=. python experiments/bench_verify.py --out DIR  # vocab 16384 (the `small` pair)

`specdec.verify.verify` on a random tree of T nodes (random parents, every node valid) with
target logits [B, T, V]: milliseconds per call (median of timed calls after a warm-up; the walk is
the whole program) of the walk the decode loop picks against the loop of T - 1 candidates. Point
masses (children ranked by the target, as SpecExec's; `point_masses=True`) at temperature 0 and
1; children drawn without replacement from a draft q (RSD) at temperature 1 (`max_children`, the
sibling rounds over all nodes).
With --step, also the whole decode step per tree size (`trees.measure.measure_verify_seconds`:
greedy, a free drafter, a random `small`-shape bf16 target; the verify forward plus the walk).
Writes DIR/bench_verify.json and .md.
"""

import argparse
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench_quantspec import time_call
from specdec.sampling import SamplingParams
from specdec.tree import ChildKind, DraftTree
from specdec.verify import verify


def random_tree(batch: int, nodes: int, logits: jax.Array, seed: int = 0) -> DraftTree:
    """Random topology; each node's children hold its parent's top tokens in rank order."""
    rng = np.random.default_rng(seed)
    parents = np.full((batch, nodes), -1, np.int32)
    for i in range(1, nodes):
        parents[:, i] = rng.integers(0, i, batch)
    rank = np.zeros((batch, nodes), np.int64)
    for b in range(batch):
        seen: dict[int, int] = {}
        for i in range(1, nodes):
            rank[b, i] = seen.get(parents[b, i], 0)
            seen[parents[b, i]] = rank[b, i] + 1
    top = np.asarray(jnp.argsort(-logits, axis=-1)[..., : int(rank.max()) + 1])  # [B, T, R]
    safe = np.maximum(parents, 0)
    tokens = top[np.arange(batch)[:, None], safe, rank].astype(np.int32)
    return DraftTree(
        tokens=jnp.asarray(tokens),
        parents=jnp.asarray(parents),
        depths=jnp.zeros((batch, nodes), jnp.int32),
        valid=jnp.ones((batch, nodes), bool),
        child_kind=jnp.full((batch, nodes), ChildKind.DETERMINISTIC, jnp.int32),
        draft_probs=None,
    )


def full_steps(smoke: bool, nodes_list) -> dict:
    """{nodes: ms per greedy decode step} with a free drafter on a random target."""
    from specdec.models import Model
    from train.configs import get_config
    from trees.measure import measure_verify_seconds

    if smoke:
        from experiments.train_reference_gpu import smoke_configs

        cfg, dtype, nodes_list = smoke_configs()[0].model, jnp.float32, [16, 64]
    else:
        cfg, dtype = get_config("small").model, jnp.bfloat16
    target = Model.random(cfg, dtype=dtype)
    prompts = [[(5 * i + j) % 200 + 3 for j in range(150)] for i in range(4)]
    acceptance = (0.7, 0.15, 0.06, 0.02)  # the H200 pair's measured vector at T = 0, rounded
    steps = {}
    for nodes in nodes_list:
        steps[nodes] = 1e3 * measure_verify_seconds(target, prompts, nodes, acceptance)
        print(f"whole step, {nodes} nodes: {steps[nodes]:.3f} ms", flush=True)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--nodes", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--step", action="store_true", help="also time whole decode steps")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()
    steps = full_steps(args.smoke, args.nodes) if args.step else {}
    vocab, nodes_list = (512, [16, 64]) if args.smoke else (16384, args.nodes)
    rows = []
    for batch in args.batch:
        for nodes in nodes_list:
            key = jax.random.key(nodes)
            logits = 3.0 * jax.random.normal(key, (batch, nodes, vocab), jnp.float32)
            tree = random_tree(batch, nodes, logits)
            # The same topology with children drawn without replacement from a draft q (RSD).
            draft = jax.nn.softmax(logits + jax.random.normal(jax.random.key(1), logits.shape), -1)
            sampled = dataclasses.replace(
                tree,
                child_kind=jnp.full_like(tree.child_kind, ChildKind.WITHOUT_REPLACEMENT),
                draft_probs=draft,
            )
            parents = np.asarray(tree.parents)
            widest = max(int(np.sum(parents[b] == u)) for b in range(batch) for u in range(nodes))
            cases = (
                ("point masses", tree, 0.0, dict(point_masses=True)),
                ("point masses", tree, 1.0, dict(point_masses=True)),
                ("without replacement", sampled, 1.0, dict(max_children=widest)),
            )
            for kind, case_tree, temperature, fast in cases:
                params = SamplingParams.create(temperature)
                row = dict(batch=batch, nodes=nodes, children=kind, temperature=temperature)
                for name, options in (("fast_ms", fast), ("loop_ms", {})):
                    walk = jax.jit(lambda t, lg, k, p=params, o=options: verify(t, lg, p, k, **o))
                    row[name] = 1e3 * time_call(walk, case_tree, logits, key, reps=20)
                rows.append(row)
                print(json.dumps(row), flush=True)
    lines = [
        "| B | nodes | children | T | loop-free / by-node walk ms | loop walk ms | speedup |",
        "|---" * 7 + "|",
    ]
    lines += [
        f"| {r['batch']} | {r['nodes']} | {r['children']} | {r['temperature']:g} "
        f"| {r['fast_ms']:.3f} | {r['loop_ms']:.3f} | {r['loop_ms'] / r['fast_ms']:.1f}x |"
        for r in rows
    ]
    lines += [f"\nwhole greedy step ({len(steps)} sizes): " + json.dumps(steps)] if steps else []
    table = "\n".join(lines)
    print(f"{jax.devices()[0].device_kind}\n{table}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_verify.json"), "w") as f:
            device = jax.devices()[0].device_kind
            json.dump(dict(device=device, rows=rows, steps=steps), f, indent=1)
        with open(os.path.join(args.out, "bench_verify.md"), "w") as f:
            f.write(f"verify walk on 1 x {jax.devices()[0].device_kind}\n\n{table}\n")


if __name__ == "__main__":
    main()
