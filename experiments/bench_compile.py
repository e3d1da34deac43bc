"""What a decode loop costs to compile, and what XLA's autotuner buys at run time.

    PYTHONPATH=. python experiments/bench_compile.py --smoke          # tiny models, any backend
    PYTHONPATH=. python experiments/bench_compile.py --out DIR        # `small` pair, GPU

Every GPU experiment here compiles tens of decode loops inside a 10-minute call (one per policy,
tree size, sampling mode), so compile time decides what fits. Each XLA flag setting runs in its
own process (XLA reads XLA_FLAGS once): it compiles the same loops (random `small` target and
`small-draft` draft, bf16) one by one, then again on threads (do compiles overlap?), and times
each loop's run (tokens/s of the second call) so a faster compile is weighed against a slower
program. Writes DIR/bench_compile.json and .md; prints one line per loop as it goes.
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

SETTINGS = {  # name -> flags appended to XLA_FLAGS
    "default": "",
    "autotune0": "--xla_gpu_autotune_level=0",
}


def child(smoke: bool, threads: int) -> dict:
    """Compile and run the loops in this process; returns its measurements."""
    import jax
    import jax.numpy as jnp

    import specdec
    from drafters import DraftModel
    from specdec.engine.generate import clear_compiled_loops
    from specdec.models import Model
    from train.configs import get_config
    from trees import Chain, Dynamic, Static

    if smoke:
        from experiments.train_reference_gpu import smoke_configs

        target_cfg, draft_cfg = (c.model for c in smoke_configs())
    else:
        target_cfg, draft_cfg = get_config("small").model, get_config("small-draft").model
    dtype = jnp.float32 if smoke else jnp.bfloat16
    target = Model.random(target_cfg, dtype=dtype)
    drafter = DraftModel(Model.random(draft_cfg, dtype=dtype, seed=1))
    prompts = [[(7 * i + j) % 100 + 3 for j in range(40 + i)] for i in range(4)]
    static = Static([[i, *[0] * d] for i in range(4) for d in range(4)])  # 4 chains of 4
    loops = {
        "plain": {},
        "Chain(6)": dict(drafter=drafter, policy=Chain(6)),
        "Static(4x4)": dict(drafter=drafter, policy=static),
        "Dynamic(7,10,60)": dict(
            drafter=drafter, policy=Dynamic(depth=7, top_k=10, total_tokens=60)
        ),
    }
    new = 16 if smoke else 64
    rows = []
    for name, kw in loops.items():
        first = specdec.generate(target, prompts, max_new_tokens=new, **kw)
        second = specdec.generate(target, prompts, max_new_tokens=new, seed=1, **kw)
        rows.append(dict(loop=name, compile_s=first.stats.compile_seconds,
                         tokens_per_s=second.stats.tokens_per_second))  # fmt: skip
        print(f"  {name}: compiled in {first.stats.compile_seconds:.1f}s, "
              f"{second.stats.tokens_per_second:,.0f} tok/s", flush=True)  # fmt: skip
    # The same loops at T = 1 (new programs: the sampling mode is static), on threads.
    clear_compiled_loops()
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futures = [
            pool.submit(
                specdec.generate, target, prompts, max_new_tokens=new, temperature=1.0, **kw
            )
            for kw in loops.values()
        ]
        threaded = [f.result().stats.compile_seconds for f in futures]
    wall = time.perf_counter() - start
    print(f"  {len(loops)} loops at T=1 on {threads} threads: {wall:.1f}s wall "
          f"(each {', '.join(f'{s:.1f}' for s in threaded)} s)", flush=True)  # fmt: skip
    return dict(device=jax.devices()[0].device_kind, rows=rows, threads=threads,
                threaded_wall_s=wall, threaded_compile_s=threaded)  # fmt: skip


def markdown(results: dict) -> str:
    names = list(results)
    loops = [r["loop"] for r in results[names[0]]["rows"]]
    head = " | ".join(f"{n} compile s | {n} tok/s" for n in names)
    lines = [f"| loop | {head} |", "| --- |" + " --- |" * (2 * len(names))]
    for i, loop in enumerate(loops):
        row = lambda n, i=i: results[n]["rows"][i]
        cells = " | ".join(
            f"{row(n)['compile_s']:.1f} | {row(n)['tokens_per_s']:,.0f}" for n in names
        )
        lines.append(f"| {loop} | {cells} |")
    cells = " | ".join(
        f"{results[n]['threaded_wall_s']:.1f} (wall, {results[n]['threads']} threads) | "
        for n in names
    )
    lines.append(f"| the same {len(loops)} at T=1 on threads | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny models")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--out", default=os.environ.get("OUT"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.smoke, args.threads)), flush=True)
        return
    results = {}
    for name in args.settings:
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SETTINGS[name]}".strip()
        print(f"== {name}: XLA_FLAGS={env['XLA_FLAGS']!r}", flush=True)
        cmd = [sys.executable, __file__, "--child", "--threads", str(args.threads)]
        proc = subprocess.run(
            cmd + (["--smoke"] if args.smoke else []),
            env=env, stdout=subprocess.PIPE, text=True, check=True,
        )  # fmt: skip
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                results[name] = json.loads(line[len("RESULT ") :])
            else:
                print(line, flush=True)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "bench_compile.json"), "w") as f:
                json.dump(results, f, indent=1)
            with open(os.path.join(args.out, "bench_compile.md"), "w") as f:
                f.write(markdown(results) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
