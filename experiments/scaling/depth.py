"""Experiment 6: acceptance by depth and the distribution of accepted lengths, per drafter.

    PYTHONPATH=. python -m experiments.scaling.depth --smoke
    PYTHONPATH=. python -m experiments.scaling.depth --out-dir $OUT [--eagle DIR]

Every drafter of `common.drafter_zoo` drafts a Chain(--depth) of argmax candidates at each
temperature. Per prompt the loop's histograms are kept: accept_hist[n] (steps whose verdict
accepted n drafts) gives acceptance by depth, P(depth d accepted | depth d - 1 was) =
#(accepted >= d) / #(accepted >= d - 1); emit_hist[n] (steps that emitted n + 1 tokens, bonus
included, after cuts by EOS / max_new_tokens) gives the accepted-length distribution and tau.
"""

import sys

from experiments.scaling import common
from trees import Chain

NAME = "depth"


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
    )
    rec = common.Recorder(NAME, args, meta)
    for temperature in args.temperatures:
        for name, drafter in zoo.items():
            if rec.time_left() < 0:
                print(f"deadline: skipping {name} at T={temperature}")
                continue
            stats = common.run_rows(
                pair.target,
                ids,
                max_new_tokens=args.max_new,
                drafter=drafter,
                **common.generate_options(name),
                policy=Chain(args.depth),
                temperature=temperature,
                seed=0,
            )
            accept = stats.accept_hist.sum(axis=0)[: args.depth + 1]  # [depth + 1]
            reached = [int(accept[d:].sum()) for d in range(args.depth + 1)]
            rec.add(
                {
                    "drafter": name,
                    "temperature": temperature,
                    "tau": stats.tau,
                    "acceptance_by_depth": [
                        reached[d] / reached[d - 1] if reached[d - 1] else None  # no data
                        for d in range(1, args.depth + 1)
                    ],
                    "accept_hist": stats.accept_hist[:, : args.depth + 1].tolist(),
                    "emit_hist": stats.emit_hist[:, : args.depth + 1].tolist(),
                    "emitted": stats.emitted.tolist(),
                    "forwards": stats.forwards.tolist(),
                }
            )
    return rec


def build_parser():
    p = common.parser(__doc__, prompts=32, max_new=128, deadline_s=540.0)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--depth", type=int, default=6)
    return p


def main(argv=None) -> common.Recorder:
    args = build_parser().parse_args(argv)
    if args.smoke:
        common.use_cpu_flags()
        args.depth = 4
    args = common.finish_args(args, prompts=3, max_new=16)
    return run(common.get_pair(args), args)


def smoke() -> common.Recorder:
    return main(["--smoke"])


if __name__ == "__main__":
    main(sys.argv[1:])
