"""Train a reference target LM and export it as an HF checkpoint directory.

    python -m train.target --config small --out runs/small [--steps N] [--resume]
        [--tokenizer DIR] [--time-budget-s 360] [--export-dtype bfloat16]
        [--init-from DIR] [--eval-exits] [--mesh DATAxMODEL]
        [--layerskip [--layerskip-p-max 0.1] [--layerskip-curriculum rotational]
                     [--layerskip-rotation 4] [--layerskip-e-scale 1.0]
                     [--layerskip-exits 2,4,6] [--layerskip-dropout-warmup]]

Without --tokenizer, the config's tokenizer is trained on first use (and cached by its contents
under artifacts/tokenizers/). Orbax checkpoints go to <out>.ckpt; --resume continues the last one.
--init-from continues training an existing HF checkpoint directory (its architecture and, without
--tokenizer, its tokenizer). --layerskip trains with the LayerSkip recipe (train.layerskip: layer
dropout + early-exit losses), for `drafters.EarlyExit`; --layerskip-dropout-warmup is for training
from scratch. At the end it prints the held-out loss / perplexity (with --layerskip or
--eval-exits, at every exit layer too), tokens/s, MFU and parameter count.
"""

from specdec import sharding
from train.layerskip import CURRICULA, LayerSkip
from train.run import config_from_args, ensure_tokenizer, parser, run_from_args


def main(argv: list[str] | None = None):
    p = parser(__doc__, default_config="tiny")
    d = LayerSkip()
    p.add_argument("--layerskip", action="store_true", help="train with the LayerSkip recipe")
    p.add_argument("--layerskip-p-max", type=float, help=f"last layer's dropout ({d.p_max})")
    p.add_argument("--layerskip-curriculum", choices=CURRICULA, help=f"({d.curriculum})")
    p.add_argument("--layerskip-rotation", type=int, help=f"R, rotational only ({d.rotation})")
    p.add_argument("--layerskip-e-scale", type=float, help=f"early exits' factor ({d.e_scale})")
    p.add_argument("--layerskip-exits", help="comma-separated exits E (default: every layer)")
    p.add_argument("--layerskip-dropout-warmup", action="store_true", help="from scratch")
    args = p.parse_args(argv)
    if args.mesh is not None:
        try:  # before any tokenizer or data work; the device count is checked when training
            sharding.parse_mesh(args.mesh)
        except ValueError as error:
            p.error(str(error))
    options = {
        "p_max": args.layerskip_p_max,
        "curriculum": args.layerskip_curriculum,
        "rotation": args.layerskip_rotation,
        "e_scale": args.layerskip_e_scale,
        "exits": args.layerskip_exits,
        "dropout_warmup": args.layerskip_dropout_warmup or None,
    }
    options = {k: v for k, v in options.items() if v is not None}
    if options and not args.layerskip:
        p.error(f"--layerskip-* options ({', '.join(options)}) need --layerskip")
    if "exits" in options:
        try:
            options["exits"] = tuple(int(e) for e in options["exits"].split(",") if e.strip())
        except ValueError:
            p.error(f"--layerskip-exits {args.layerskip_exits!r} is not a list of integers")
    try:
        cfg = config_from_args(args, layerskip=LayerSkip(**options) if args.layerskip else None)
    except ValueError as error:  # bad recipe values, exits beyond the model's layers, ...
        p.error(str(error))
    if args.init_from and not args.tokenizer:
        tokenizer_dir = args.init_from  # an exported checkpoint carries its tokenizer
    else:
        tokenizer_dir = ensure_tokenizer(cfg.tokenizer, args.tokenizer, source=args.data)
    return run_from_args(args, cfg, tokenizer_dir)


if __name__ == "__main__":
    main()
