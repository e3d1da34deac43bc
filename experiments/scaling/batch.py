"""Experiment 5: throughput and speedup against batch size (1 to 64), with and without trees.

    PYTHONPATH=. python -m experiments.scaling.batch --smoke
    PYTHONPATH=. python -m experiments.scaling.batch --out-dir $OUT

At each batch size B the prompts are repeated to fill B rows, and three configurations decode
them at T = 0: plain, the pair's DraftModel with Chain(4) (no tree) and with the 10-node static
tree of bench_decode (a tree). tokens/s are new tokens (all rows) over wall time, compilation
excluded (one warm-up run, then the median of --repeats); speedup is against plain decoding at the
same batch size in the same process.
"""

import itertools
import sys

from drafters import DraftModel
from experiments.bench_decode import STATIC_TREE
from experiments.scaling import common
from experiments.scaling.budget import timed
from trees import Chain, Static

NAME = "batch"


def run(pair: common.Pair, args) -> common.Recorder:
    base = common.prompts(pair.target.tokenizer, args.prompts)
    tree = Static(STATIC_TREE)
    configs = {
        "plain": {},
        "DraftModel + Chain(4)": dict(drafter=DraftModel(pair.draft), policy=Chain(4)),
        f"DraftModel + Static({len(STATIC_TREE) + 1} nodes)": dict(
            drafter=DraftModel(pair.draft), policy=tree
        ),
    }
    meta = common.metadata(
        pair,
        args,
        batches=args.batches,
        temperature=0.0,
        repeats=args.repeats,
        configs=list(configs),
    )
    rec = common.Recorder(NAME, args, meta)
    for batch in args.batches:
        ids = list(itertools.islice(itertools.cycle(base), batch))
        plain_speed = None
        for name, kwargs in configs.items():
            if rec.time_left() < 0:
                print(f"deadline: skipping batch {batch} {name}")
                continue
            out, speed, compile_s = timed(
                pair.target, ids, args.repeats, max_new_tokens=args.max_new, **kwargs
            )
            plain_speed = speed if name == "plain" else plain_speed
            rec.add(
                {
                    "batch": batch,
                    "config": name,
                    "tree": name.endswith("nodes)"),
                    "tau": out.stats.tau,
                    "tokens_per_s": speed,
                    "speedup": speed / plain_speed if plain_speed else None,
                    "target_forwards": out.stats.target_forwards,
                    "new_tokens": out.stats.new_tokens,
                    "compile_s": compile_s,
                }
            )
    return rec


def build_parser():
    p = common.parser(__doc__, prompts=16, max_new=128, deadline_s=560.0)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--repeats", type=int, default=3)
    return p


def main(argv=None) -> common.Recorder:
    args = build_parser().parse_args(argv)
    if args.smoke:
        common.use_cpu_flags()
        args.batches, args.repeats = [1, 4], 1
    args = common.finish_args(args, prompts=4, max_new=16)
    return run(common.get_pair(args), args)


def smoke() -> common.Recorder:
    return main(["--smoke"])


if __name__ == "__main__":
    main(sys.argv[1:])
