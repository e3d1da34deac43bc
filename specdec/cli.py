"""Command line: `python -m specdec generate --model DIR --prompt "..." [options]`."""

import argparse
import json
import sys

import specdec
from drafters import DraftModel, NGram
from trees import Chain, Static


def parse_policy(text: str, children: str):
    """'chain:4' -> Chain(4); 'static:[[0],[1],[0,0]]' -> Static(paths)."""
    kind, _, arg = text.partition(":")
    if kind == "chain":
        try:
            depth = int(arg)
        except ValueError as err:
            raise ValueError(f"--policy chain:N needs an integer depth, got {arg!r}") from err
        return Chain(depth, children=children)
    if kind == "static":
        try:
            paths = json.loads(arg)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"--policy static:PATHS needs JSON paths like [[0],[1],[0,0]]: {err}"
            ) from err
        return Static(paths, children=children)
    raise ValueError(f"--policy must be 'chain:N' or 'static:[[...]]', got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate text from a prompt with an HF checkpoint")
    gen.add_argument(
        "--model",
        required=True,
        help="HF checkpoint directory (config.json, safetensors, tokenizer.json)",
    )
    gen.add_argument(
        "--prompt", action="append", required=True, help="prompt text; repeat for a batch"
    )
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--dtype", default=None, help="float32 / bfloat16 / float16 (default: as stored)"
    )
    gen.add_argument("--attention", default="auto", help="auto / xla / pallas")
    gen.add_argument(
        "--draft-model", default=None, help="checkpoint of a draft LM (same tokenizer)"
    )
    gen.add_argument(
        "--ngram", type=int, default=0, help="draft by prompt lookup with n-grams up to N"
    )
    gen.add_argument("--policy", default="chain:4", help="chain:N or static:[[0],[1],[0,0],...]")
    gen.add_argument(
        "--children", default="top", choices=["top", "sample", "sample_without_replacement"]
    )
    gen.add_argument("--no-eos", action="store_true", help="do not stop at the tokenizer's EOS")
    return parser


def run_generate(args) -> int:
    model = specdec.load(args.model, dtype=args.dtype, attention=args.attention)
    if model.tokenizer is None:
        raise ValueError(
            f"{args.model} has no tokenizer.json; the CLI needs one to encode the prompt"
        )
    drafter = None
    if args.draft_model and args.ngram:
        raise ValueError("choose one drafter: --draft-model or --ngram")
    if args.draft_model:
        drafter = DraftModel(
            specdec.load(args.draft_model, dtype=args.dtype, attention=args.attention)
        )
    elif args.ngram:
        drafter = NGram(max_ngram=args.ngram)
    policy = parse_policy(args.policy, args.children) if drafter else None
    ids = [model.tokenizer.encode(p) for p in args.prompt]
    eos = None if args.no_eos else (model.tokenizer.eos_token_ids or None)
    out = specdec.generate(
        model,
        ids,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        eos_token_id=eos,
        drafter=drafter,
        policy=policy,
    )
    for prompt, seq in zip(args.prompt, out.sequences(), strict=True):
        print(f"--- prompt: {prompt}")
        print(model.tokenizer.decode(seq))
    print(f"--- {out.stats.summary()}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_generate(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
