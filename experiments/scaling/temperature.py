"""Experiment 2: acceptance against temperature (0 to 1.5), with and without top-p, per drafter.

    PYTHONPATH=. python -m experiments.scaling.temperature --smoke
    PYTHONPATH=. python -m experiments.scaling.temperature --out-dir $OUT [--eagle DIR]

Every drafter of `common.drafter_zoo` drafts a Chain(--depth) of argmax candidates, verified as
point masses (exact at any temperature). Temperature and top-p are values of the compiled loop,
so one compile per drafter serves the whole sweep. Counts are kept per prompt (common.run_rows)
so the notebook can put bootstrap intervals on tau (bonus token included) and on the first
draft's acceptance.
"""

import sys

from experiments.scaling import common
from trees import Chain

NAME = "temperature"


def row_counts(stats: common.RowStats) -> dict:
    """Per-prompt counts: emitted tokens, target forwards, steps accepting >= 1 draft."""
    return {
        "emitted": stats.emitted.tolist(),
        "forwards": stats.forwards.tolist(),
        "accepted_first": stats.accept_hist[:, 1:].sum(axis=1).tolist(),
        "steps": stats.accept_hist.sum(axis=1).tolist(),
    }


def run(pair: common.Pair, args) -> common.Recorder:
    ids = common.prompts(pair.target.tokenizer, args.prompts)
    zoo, records = common.drafter_zoo(pair, args)
    meta = common.metadata(
        pair,
        args,
        drafters=records,
        policy=f"Chain({args.depth}), argmax candidates",
        batch=len(ids),
        temperatures=args.temperatures,
        top_p=args.top_p,
    )
    rec = common.Recorder(NAME, args, meta)
    for name, drafter in zoo.items():
        for top_p in args.top_p:
            for temperature in args.temperatures:
                if rec.time_left() < 0:
                    print(f"deadline: skipping {name} T={temperature} top_p={top_p}")
                    continue
                stats = common.run_rows(
                    pair.target,
                    ids,
                    max_new_tokens=args.max_new,
                    drafter=drafter,
                    **common.generate_options(name),
                    policy=Chain(args.depth),
                    temperature=temperature,
                    top_p=top_p,
                    seed=0,
                )
                counts = row_counts(stats)
                rec.add(
                    {
                        "drafter": name,
                        "temperature": temperature,
                        "top_p": top_p,
                        "tau": stats.tau,
                        "first_acceptance": sum(counts["accepted_first"])
                        / max(sum(counts["steps"]), 1),
                        **counts,
                    }
                )
    return rec


def build_parser():
    p = common.parser(__doc__, prompts=32, max_new=128, deadline_s=540.0)
    p.add_argument(
        "--temperatures",
        type=float,
        nargs="+",
        default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5],
    )
    p.add_argument("--top-p", type=float, nargs="+", default=[1.0, 0.9], help="1.0: off")
    p.add_argument("--depth", type=int, default=4)
    return p


def main(argv=None) -> common.Recorder:
    args = build_parser().parse_args(argv)
    if args.smoke:
        common.use_cpu_flags()
        args.temperatures = [0.0, 0.5, 1.0, 1.5]
    args = common.finish_args(args, prompts=3, max_new=16)
    return run(common.get_pair(args), args)


def smoke() -> common.Recorder:
    return main(["--smoke"])


if __name__ == "__main__":
    main(sys.argv[1:])
