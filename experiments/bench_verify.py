"""The verify walk alone: the point-mass walk (no loop) against the candidate loop, per tree size.

    PYTHONPATH=. python experiments/bench_verify.py --smoke     # small shapes, any backend
    PYTHONPATH=. python experiments/bench_verify.py --out DIR  # vocab 16384 (the `small` pair)

`specdec.verify.verify` on a random tree of T nodes (random parents, every node valid, children
ranked by the target like SpecExec's) with target logits [B, T, V], at temperature 0 and 1:
milliseconds per call (median of timed calls after a warm-up; the walk is the whole program) for
`point_masses=True` (what policies with children="top" use) and the loop of T - 1 candidates.
With --step, also the whole decode step per tree size (`trees.measure.measure_verify_seconds`:
greedy, a free drafter, a random `small`-shape bf16 target; the verify forward plus the walk).
Writes DIR/bench_verify.json and .md.
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

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


def time_ms(fn, *args, repeats: int = 20) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


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
            for temperature in (0.0, 1.0):
                params = SamplingParams.create(temperature)
                row = dict(batch=batch, nodes=nodes, temperature=temperature)
                for name, point_masses in (("point_mass_ms", True), ("loop_ms", False)):
                    walk = jax.jit(verify, static_argnames=("point_masses",))
                    call = lambda t, lg, k, pm=point_masses, w=walk, p=params: w(
                        t, lg, p, k, point_masses=pm
                    )
                    row[name] = time_ms(call, tree, logits, key)
                rows.append(row)
                print(json.dumps(row), flush=True)
    lines = ["| B | nodes | T | point-mass walk ms | loop walk ms | speedup |", "|---" * 6 + "|"]
    lines += [
        f"| {r['batch']} | {r['nodes']} | {r['temperature']:g} | {r['point_mass_ms']:.3f} "
        f"| {r['loop_ms']:.3f} | {r['loop_ms'] / r['point_mass_ms']:.1f}x |"
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
