"""Experiment 4: acceptance against draft capacity, with Scylla's log-linear law fitted.

    PYTHONPATH=. python -m experiments.scaling.capacity --smoke
    PYTHONPATH=. python -m experiments.scaling.capacity --out-dir $OUT

Capacity is the drafter's trainable parameter count, varied two ways at a fixed number of
training steps (so fixed training tokens):

    EAGLE head layers 1 / 2 / 4   EAGLE-1/2 heads (train.eagle exports EAGLE-3 heads with one
                                  layer only, the public layout, so depth is varied on EAGLE-1/2)
    DraftModel widths             the pair's draft architecture at several hidden sizes (heads
                                  of the same head_dim, FFN 3x), distilled from the target

Evaluation and fit as experiment 3: Chain(--depth) at T = 0, per-prompt counts, tau = a + b
log10(params) with prompt-bootstrap intervals.
"""

import sys
import tempfile
from pathlib import Path

from drafters import DraftModel
from experiments.scaling import common
from experiments.scaling.fit import fit_per_drafter
from experiments.scaling.training_tokens import draft_config, evaluate

NAME = "capacity"


def widened(cfg, width: int):
    """cfg's draft model at hidden size `width` (head_dim kept, KV heads half the heads)."""
    head_dim = cfg.model.head_dim
    heads = max(1, width // head_dim)
    return cfg.replace(
        name=f"{cfg.name}-w{width}",
        model=dict(
            hidden_size=width,
            num_heads=heads,
            num_kv_heads=max(1, heads // 2),
            intermediate_size=3 * width,
        ),
    )


def fits(rows: list[dict]) -> dict:
    """{drafter: fitted law} of tau against params (drafters with two or more points)."""
    return fit_per_drafter(rows, "params", "params")


def run(pair: common.Pair, args) -> common.Recorder:
    ids = common.prompts(pair.target.tokenizer, args.prompts)
    meta = common.metadata(
        pair,
        args,
        policy=f"Chain({args.depth}), T = 0",
        batch=len(ids),
        temperature=0.0,
        head_layers=args.head_layers,
        widths=args.widths,
        eagle_steps=args.eagle_steps,
        draft_steps=args.draft_steps,
    )
    rec = common.Recorder(NAME, args, meta)
    work = Path(tempfile.mkdtemp(prefix="specdec_capacity_")) if args.smoke else Path(args.work)
    base = common.default_eagle_config(args.smoke, version=1, steps=args.eagle_steps)
    data = common.eagle_data(pair, base, args.smoke)
    for layers in args.head_layers:
        if rec.time_left() < 0:
            print(f"deadline: skipping the {layers}-layer head")
            continue
        cfg = common.default_eagle_config(
            args.smoke, version=1, num_layers=layers, steps=args.eagle_steps
        )
        drafter, record = common.train_eagle(pair, cfg, data)
        row = {"drafter": "EAGLE-1/2 head", "params": record["head_params"], **record}
        rec.add(row | evaluate(pair, ids, drafter, args))
        rec.data["fits"] = fits(rec.data["rows"])
        rec.write()
    for width in args.widths:
        if rec.time_left() < 0:
            print(f"deadline: skipping DraftModel width {width}")
            continue
        cfg = widened(draft_config(args.smoke, args.draft_steps), width)
        model, record = common.train_draft_model(pair, cfg, work)
        row = {"drafter": "DraftModel", "width": width, **record}
        rec.add(row | evaluate(pair, ids, DraftModel(model), args))
        rec.data["fits"] = fits(rec.data["rows"])
        rec.write()
    return rec


def build_parser():
    p = common.parser(__doc__, prompts=32, max_new=128, deadline_s=560.0)
    p.add_argument("--head-layers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--widths", type=int, nargs="+", default=[128, 256, 384, 512])
    p.add_argument("--eagle-steps", type=int, default=300)
    p.add_argument("--draft-steps", type=int, default=300)
    p.add_argument("--depth", type=int, default=4)
    return p


def main(argv=None) -> common.Recorder:
    args = build_parser().parse_args(argv)
    if args.smoke:
        common.use_cpu_flags()
        args.head_layers, args.widths = [1, 2], [32, 64]
        args.eagle_steps = args.draft_steps = 8
    args = common.finish_args(args, prompts=3, max_new=16)
    return run(common.get_pair(args), args)


def smoke() -> common.Recorder:
    return main(["--smoke"])


if __name__ == "__main__":
    main(sys.argv[1:])
