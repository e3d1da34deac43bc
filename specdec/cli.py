"""Command line: `specdec generate --model DIR --prompt "..." [options]` (or `python -m specdec`).

Each prompt is sent as one user turn through the checkpoint's chat template (the `chat_template`
of its tokenizer_config.json, rendered as transformers' `apply_chat_template` renders it, with the
assistant's generation prompt), so a plain question gets an answer rather than a continuation of
the question's text. `--raw` sends the prompt as it is; a checkpoint without a chat template gets
its prompts raw, with a note on stderr.

Every expected failure (a bad argument, an unreadable checkpoint, a request the model cannot serve)
ends with one `error: ...` line on stderr and exit status 2, never a traceback.
"""

import argparse
import json
import sys

import jinja2

import specdec
import specdec.checkpoint
from drafters import DraftModel, NGram
from specdec import sharding
from trees import Chain, Static

DTYPES = ("float32", "bfloat16", "float16")
CHILDREN = ("top", "sample", "sample_without_replacement")
DEFAULT_POLICY, DEFAULT_CHILDREN = "chain:4", "top"
EXIT_ERROR = 2  # argparse's status for a usage error; the CLI uses it for every expected failure


class CLIError(Exception):
    """A request the CLI refuses, with the message to print."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # argparse prints "prog: error: ..."; end with the same one-line "error: ..." as the rest.
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"error: {message}\n")


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
    parser = _Parser(
        prog="specdec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    gen.add_argument(
        "--raw",
        action="store_true",
        help="send the prompts as they are instead of through the chat template",
    )
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--dtype", default=None, choices=DTYPES, help="default: as stored")
    gen.add_argument("--attention", default="auto", help="auto / xla / pallas")
    gen.add_argument(
        "--draft-model", default=None, help="checkpoint of a draft LM (same tokenizer)"
    )
    gen.add_argument(
        "--ngram", type=int, default=0, help="draft by prompt lookup with n-grams up to N"
    )
    gen.add_argument(
        "--policy",
        default=None,
        help=f"needs a drafter: chain:N or static:[[0],[1],[0,0],...] (default {DEFAULT_POLICY})",
    )
    gen.add_argument(
        "--children",
        default=None,
        choices=CHILDREN,
        help=f"needs a drafter: how each node's children are drafted (default {DEFAULT_CHILDREN})",
    )
    gen.add_argument("--no-eos", action="store_true", help="do not stop at the tokenizer's EOS")
    gen.add_argument(
        "--mesh",
        default=None,
        metavar="DATAxMODEL",
        help="shard over DATA x MODEL devices (e.g. 1x2: tensor parallel over 2 devices; the "
        "number of prompts must divide by DATA)",
    )
    gen.add_argument(
        "--allow-beyond-max-position",
        action="store_true",
        help="generate past the model's max_position_embeddings (untrained positions)",
    )
    return parser


def encode_prompts(model, model_dir: str, prompts: list[str], raw: bool) -> list[list[int]]:
    """Token ids of each prompt: through the chat template unless `raw` or there is none."""
    tokenizer = model.tokenizer
    if raw:
        return [tokenizer.encode(p) for p in prompts]
    if tokenizer.chat_template is None:
        print(
            f"note: {model_dir} has no chat template (tokenizer_config.json 'chat_template'); "
            "sending the prompts as they are (--raw silences this note)",
            file=sys.stderr,
        )
        return [tokenizer.encode(p) for p in prompts]
    try:
        return [tokenizer.encode_chat(p) for p in prompts]
    except jinja2.TemplateError as err:
        raise CLIError(
            f"the chat template of {model_dir} failed: {err}; --raw sends the prompt as it is"
        ) from err


def check_positions(model: specdec.Model, ids: list[list[int]], args) -> None:
    """Refuse a generation longer than the model's max_position_embeddings unless asked for.

    generate() refuses it too; checking here first lets the message name the CLI's flags.
    """
    longest = max(len(seq) for seq in ids)
    positions = longest + args.max_new_tokens
    limit = model.config.max_position_embeddings
    if positions > limit and not args.allow_beyond_max_position:
        raise CLIError(
            f"the longest prompt ({longest} tokens) + --max-new-tokens {args.max_new_tokens} = "
            f"{positions} positions, beyond the model's max_position_embeddings={limit}; "
            "shorten them, or pass --allow-beyond-max-position to generate anyway"
        )


def load_draft(args, mesh) -> specdec.Model:
    """The draft model, sharded like the target where its heads divide the mesh, else replicated."""
    load = lambda m: specdec.load(
        args.draft_model, dtype=args.dtype, attention=args.attention, mesh=m
    )
    if mesh is None:
        return load(None)
    try:
        sharding.check_config(specdec.checkpoint.read_config(args.draft_model), mesh, "draft")
    except ValueError as err:
        print(f"note: {err}; the draft model is replicated on every device", file=sys.stderr)
        return load(None)
    return load(mesh)


def run_generate(args) -> int:
    if args.draft_model and args.ngram:
        raise CLIError("choose one drafter: --draft-model or --ngram")
    has_drafter = bool(args.draft_model or args.ngram)
    for flag, value in (("--policy", args.policy), ("--children", args.children)):
        if value is not None and not has_drafter:
            raise CLIError(f"{flag} shapes speculative drafts: it needs --draft-model or --ngram")
    policy = (
        parse_policy(args.policy or DEFAULT_POLICY, args.children or DEFAULT_CHILDREN)
        if has_drafter
        else None
    )
    mesh = sharding.mesh_from_text(args.mesh)
    if mesh is not None:
        sharding.check_batch(len(args.prompt), mesh)
    model = specdec.load(args.model, dtype=args.dtype, attention=args.attention, mesh=mesh)
    if model.tokenizer is None:
        raise CLIError(f"{args.model} has no tokenizer.json; the CLI needs one to encode prompts")
    drafter = None
    if args.draft_model:
        drafter = DraftModel(load_draft(args, mesh))
    elif args.ngram:
        drafter = NGram(max_ngram=args.ngram)
    ids = encode_prompts(model, args.model, args.prompt, args.raw)
    check_positions(model, ids, args)
    eos = None if args.no_eos else (model.tokenizer.eos_token_ids or None)
    # Only when asked: generate() refuses positions past max_position_embeddings by default.
    beyond = dict(allow_beyond_max_position=True) if args.allow_beyond_max_position else {}
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
        **beyond,
    )
    for prompt, seq in zip(args.prompt, out.sequences(), strict=True):
        print(f"--- prompt: {prompt}")
        print(model.tokenizer.decode(seq))
    print(f"--- {out.stats.summary()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; the exit status is returned (0, or 2 after one `error:` line on stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0), or a usage error already printed (2)
        return exit_.code
    try:
        return run_generate(args)
    except (CLIError, ValueError, TypeError, OSError, jinja2.TemplateError) as err:
        message = " ".join(str(err).split()) or type(err).__name__  # one line, whatever err says
        print(f"error: {message}", file=sys.stderr)
        return EXIT_ERROR
