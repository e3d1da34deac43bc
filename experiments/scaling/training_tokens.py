"""Experiment 3: acceptance against draft training tokens, with Scylla's log-linear law fitted.

    PYTHONPATH=. python -m experiments.scaling.training_tokens --smoke
    PYTHONPATH=. python -m experiments.scaling.training_tokens --out-dir $OUT

For each fraction f of a full run (1/16 .. 1 on the GPU), a fresh drafter is trained for
round(f x full steps) optimizer steps on the same data stream with its own warmup + cosine
schedule, so its training tokens are f x the full run's (steps x batch x sequence length):

    EAGLE-3  a head on the pair's target (train.eagle, online target features)
    DraftModel  the pair's draft architecture distilled from the target (train.run)

Each is evaluated by decoding the prompts with Chain(--depth) at T = 0; per-prompt counts are
kept, and `experiments.scaling.fit.bootstrap_log_linear` fits tau = a + b log10(tokens) with
percentile intervals from resampling prompts.
"""

import dataclasses
import sys
import tempfile
from pathlib import Path

from drafters import DraftModel
from experiments.scaling import common
from experiments.scaling.fit import fit_per_drafter
from trees import Chain

NAME = "training_tokens"
FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


def draft_config(smoke: bool, steps: int):
    """The pair's draft architecture with a schedule of `steps` (smoke: micro batches)."""
    from train.configs import get_config

    if smoke:
        cfg = get_config("tiny-draft", batch_size=4, seq_len=64, eval_tokens=2048, log_every=1)
    else:
        cfg = get_config("small-draft", batch_size=16, eval_tokens=131_072, eval_every=0)
    return cfg.replace(steps=steps, warmup_steps=max(0, min(cfg.warmup_steps, steps // 10)))


def evaluate(pair, ids, drafter, args) -> dict:
    stats = common.run_rows(
        pair.target, ids, max_new_tokens=args.max_new, drafter=drafter, policy=Chain(args.depth)
    )
    return {
        "tau": stats.tau,
        "emitted": stats.emitted.tolist(),
        "forwards": stats.forwards.tolist(),
    }


def fits(rows: list[dict]) -> dict:
    """{drafter: fitted law} of tau against training tokens (drafters with two or more points)."""
    return fit_per_drafter(rows, "train_tokens", "training tokens")


def run(pair: common.Pair, args) -> common.Recorder:
    ids = common.prompts(pair.target.tokenizer, args.prompts)
    meta = common.metadata(
        pair,
        args,
        policy=f"Chain({args.depth}), T = 0",
        batch=len(ids),
        temperature=0.0,
        fractions=args.fractions,
        eagle_steps=args.eagle_steps,
        draft_steps=args.draft_steps,
    )
    rec = common.Recorder(NAME, args, meta)
    work = Path(tempfile.mkdtemp(prefix="specdec_tokens_")) if args.smoke else Path(args.work)
    eagle_cfg = common.default_eagle_config(args.smoke, version=3)
    data = common.eagle_data(pair, eagle_cfg, args.smoke)
    for fraction in args.fractions:
        if rec.time_left() < 0:
            print(f"deadline: skipping EAGLE-3 at fraction {fraction}")
            continue
        steps = max(2, round(fraction * args.eagle_steps))
        cfg = dataclasses.replace(
            eagle_cfg, steps=steps, warmup_steps=min(eagle_cfg.warmup_steps, steps // 2)
        )
        drafter, record = common.train_eagle(pair, cfg, data)
        rec.add(
            {
                "drafter": "EAGLE-3",
                "fraction": fraction,
                **record,
                **evaluate(pair, ids, drafter, args),
            }
        )
        rec.data["fits"] = fits(rec.data["rows"])
        rec.write()
    for fraction in args.fractions:
        if rec.time_left() < 0:
            print(f"deadline: skipping DraftModel at fraction {fraction}")
            continue
        cfg = draft_config(args.smoke, max(2, round(fraction * args.draft_steps)))
        model, record = common.train_draft_model(pair, cfg, work)
        record["train_tokens"] = record.get("train_tokens", cfg.steps * cfg.tokens_per_step)
        result = evaluate(pair, ids, DraftModel(model), args)
        rec.add({"drafter": "DraftModel", "fraction": fraction, **record, **result})
        rec.data["fits"] = fits(rec.data["rows"])
        rec.write()
    return rec


def build_parser():
    p = common.parser(__doc__, prompts=32, max_new=128, deadline_s=560.0)
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    p.add_argument("--eagle-steps", type=int, default=400, help="the full EAGLE-3 run")
    p.add_argument("--draft-steps", type=int, default=600, help="the full DraftModel run")
    p.add_argument("--depth", type=int, default=4)
    return p


def main(argv=None) -> common.Recorder:
    args = build_parser().parse_args(argv)
    if args.smoke:
        common.use_cpu_flags()
        args.fractions, args.eagle_steps, args.draft_steps = [0.25, 0.5, 1.0], 16, 16
    args = common.finish_args(args, prompts=3, max_new=16)
    return run(common.get_pair(args), args)


def smoke() -> common.Recorder:
    return main(["--smoke"])


if __name__ == "__main__":
    main(sys.argv[1:])
