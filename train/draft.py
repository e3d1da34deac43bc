"""Train a draft LM for `drafters.DraftModel`, optionally distilled from an exported target.

    python -m train.draft --config small-draft --teacher runs/small --out runs/small-draft
        [--distill-weight 0.5] [--distill-temperature 1.0] [--steps N] [--resume] ...

The draft shares the teacher's tokenizer (its files are copied from the teacher's directory).
loss = (1 - w) * CE + w * KL(teacher || student) on the teacher's logits, the teacher running
forward in the same jitted step. Without --teacher, give --tokenizer and it trains on CE alone.
"""

from train.run import config_from_args, parser, run_from_args


def main(argv: list[str] | None = None):
    p = parser(__doc__, default_config="tiny-draft")
    p.add_argument("--teacher", help="the exported target checkpoint to distill from")
    p.add_argument("--distill-weight", type=float, help="w in [0, 1] (default: the config's)")
    p.add_argument("--distill-temperature", type=float)
    args = p.parse_args(argv)
    if args.teacher is None and args.tokenizer is None:
        p.error("give --teacher (its tokenizer is used) or --tokenizer")
    extra = {"distill_weight": args.distill_weight, "distill_temperature": args.distill_temperature}
    if args.teacher is None:
        extra["distill_weight"] = 0.0
    cfg = config_from_args(args, **extra)
    return run_from_args(args, cfg, args.teacher or args.tokenizer, teacher_dir=args.teacher)


if __name__ == "__main__":
    main()
