"""Train a reference target LM and export it as an HF checkpoint directory.

    python -m train.target --config small --out runs/small [--steps N] [--resume]
        [--tokenizer DIR] [--time-budget-s 360] [--export-dtype bfloat16]

Without --tokenizer, the config's tokenizer is trained on first use (and cached by its contents
under artifacts/tokenizers/). Orbax checkpoints go to <out>.ckpt; --resume continues the last one.
At the end it prints the held-out loss / perplexity, tokens/s, MFU and parameter count.
"""

from train.run import config_from_args, ensure_tokenizer, parser, run_from_args


def main(argv: list[str] | None = None):
    args = parser(__doc__, default_config="tiny").parse_args(argv)
    cfg = config_from_args(args)
    tokenizer_dir = ensure_tokenizer(cfg.tokenizer, args.tokenizer, source=args.data)
    return run_from_args(args, cfg, tokenizer_dir)


if __name__ == "__main__":
    main()
