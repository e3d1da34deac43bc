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
import dataclasses
import json
import sys

import jinja2

import specdec
import specdec.checkpoint
from drafters import DraftModel, Eagle, EarlyExit, NGram, QuantSpec
from specdec import sharding
from trees import Adaptive, Chain, Dynamic, Sequoia, SpecExec, Static, StochasticBeam

DTYPES = ("float32", "bfloat16", "float16")
CHILDREN = ("top", "sample", "sample_without_replacement")
KV_CACHES = ("int8-hierarchical",)
DRAFTER_FLAGS = ("--draft-model", "--ngram", "--eagle", "--early-exit", "--quantspec")
POLICY_FORMS = (
    "chain:N | static:[[0],[1],[0,0],...] | dynamic[:DEPTH,TOP_K,TOTAL] | "
    "sequoia:BUDGET:A1,A2,... | specexec:BUDGET | beam:WIDTH,DEPTH | adaptive:DEPTH[,METHOD]"
)
EXIT_ERROR = 2  # argparse's status for a usage error; the CLI uses it for every expected failure


class CLIError(Exception):
    """A request the CLI refuses, with the message to print."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # argparse prints "prog: error: ..."; end with the same one-line "error: ..." as the rest.
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"error: {message}\n")


def _ints(form: str, arg: str, count: int) -> list[int]:
    try:
        values = [int(x) for x in arg.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise ValueError(f"--policy {form} needs {count} comma-separated integer(s), got {arg!r}")
    return values


def parse_policy(text: str, children: str | None = None):
    """A policy from its command-line form (`POLICY_FORMS`), e.g. 'chain:4' -> Chain(4),
    'dynamic:7,10,60' -> Dynamic(7, 10, 60), 'sequoia:32:0.8,0.1,0.05' -> Sequoia(32, (...)).
    children: how nodes' children are drafted (None: the policy's default); each policy checks
    it can draft that way."""
    kind, _, arg = text.partition(":")
    child = {} if children is None else {"children": children}
    if kind == "chain":
        (depth,) = _ints("chain:N", arg, 1)
        return Chain(depth, **child)
    if kind == "static":
        try:
            paths = json.loads(arg)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"--policy static:PATHS needs JSON paths like [[0],[1],[0,0]]: {err}"
            ) from err
        return Static(paths, **child)
    if kind == "dynamic":
        if not arg:
            return Dynamic(**child)  # EAGLE-2's defaults
        depth, top_k, total = _ints("dynamic:DEPTH,TOP_K,TOTAL", arg, 3)
        return Dynamic(depth=depth, top_k=top_k, total_tokens=total, **child)
    if kind == "sequoia":
        budget, _, rates = arg.partition(":")
        (budget,) = _ints("sequoia:BUDGET:A1,A2,...", budget, 1)
        try:
            acceptance = tuple(float(x) for x in rates.split(","))
        except ValueError:
            acceptance = ()
        if not rates or not acceptance:
            raise ValueError(
                "--policy sequoia:BUDGET:A1,A2,... needs the per-rank acceptance vector after the "
                f"budget (measure it with trees.measure_acceptance), got {text!r}"
            )
        return Sequoia(budget, acceptance, **child)
    if kind == "specexec":
        (budget,) = _ints("specexec:BUDGET", arg, 1)
        return SpecExec(budget=budget, **child)
    if kind == "beam":
        width, depth = _ints("beam:WIDTH,DEPTH", arg, 2)
        return StochasticBeam(width=width, depth=depth, **child)
    if kind == "adaptive":
        depth, _, method = arg.partition(",")
        (depth,) = _ints("adaptive:DEPTH[,METHOD]", depth, 1)
        return Adaptive(depth=depth, **({"method": method} if method else {}), **child)
    raise ValueError(f"--policy must be one of {POLICY_FORMS}; got {text!r}")


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
    drafters = gen.add_argument_group("drafters (at most one; without one, plain decoding)")
    drafters.add_argument(
        "--draft-model", default=None, help="checkpoint of a draft LM (same tokenizer)"
    )
    drafters.add_argument(
        "--ngram", type=int, default=0, help="draft by prompt lookup with n-grams up to N"
    )
    drafters.add_argument(
        "--eagle", default=None, metavar="HEAD_DIR", help="an EAGLE-1/2/3 head trained for --model"
    )
    drafters.add_argument(
        "--early-exit",
        type=int,
        default=None,
        metavar="E",
        help="self-speculation with the model's first E layers (LayerSkip)",
    )
    drafters.add_argument(
        "--quantspec",
        action="store_true",
        help="self-speculation over the INT4 view of the INT4/INT8 cache (implies --kv-cache "
        "int8-hierarchical)",
    )
    gen.add_argument(
        "--int4-draft-weights",
        type=int,
        nargs="?",
        const=128,
        default=None,
        metavar="GROUP",
        help="with --quantspec: draft with 4-bit copies of the weights, groups of GROUP input "
        "features (default 128)",
    )
    gen.add_argument(
        "--policy",
        default=None,
        help=f"needs a drafter: {POLICY_FORMS} (default: the drafter's own)",
    )
    gen.add_argument(
        "--children",
        default=None,
        choices=CHILDREN,
        help="needs a drafter: how each node's children are drafted (default: the policy's)",
    )
    gen.add_argument(
        "--kv-cache",
        default=None,
        choices=KV_CACHES,
        help="store the KV cache as INT4/INT8 planes (default: the model's dtype)",
    )
    gen.add_argument(
        "--steps-per-sync",
        type=int,
        default=1,
        help="decode steps between checks for finished sequences",
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


def chosen_drafters(args) -> list[str]:
    """The drafter flags given (at most one is allowed)."""
    given = (args.draft_model, args.ngram, args.eagle, args.early_exit is not None, args.quantspec)
    return [flag for flag, value in zip(DRAFTER_FLAGS, given, strict=True) if value]


def make_drafter(args, model: specdec.Model, mesh):
    """The drafter the flags ask for (None: plain decoding)."""
    if args.draft_model:
        return DraftModel(load_draft(args, mesh))
    if args.ngram:
        return NGram(max_ngram=args.ngram)
    if args.eagle:
        return Eagle.load(args.eagle, model)
    if args.early_exit is not None:
        return EarlyExit(exit_layer=args.early_exit)
    if args.quantspec:
        if args.int4_draft_weights is not None:
            return QuantSpec.with_int4_weights(model, args.int4_draft_weights)
        return QuantSpec()
    return None


def run_generate(args) -> int:
    drafter_flags = chosen_drafters(args)
    if len(drafter_flags) > 1:
        raise CLIError(f"choose one drafter, got {' and '.join(drafter_flags)}")
    for flag, value in (("--policy", args.policy), ("--children", args.children)):
        if value is not None and not drafter_flags:
            raise CLIError(
                f"{flag} shapes speculative drafts: it needs a drafter ({', '.join(DRAFTER_FLAGS)})"
            )
    if args.int4_draft_weights is not None and not args.quantspec:
        raise CLIError("--int4-draft-weights are QuantSpec's draft weights: it needs --quantspec")
    policy = parse_policy(args.policy, args.children) if args.policy else None
    kv_cache = args.kv_cache or ("int8-hierarchical" if args.quantspec else None)
    mesh = sharding.mesh_from_text(args.mesh)
    if mesh is not None:
        sharding.check_batch(len(args.prompt), mesh)
    model = specdec.load(args.model, dtype=args.dtype, attention=args.attention, mesh=mesh)
    if model.tokenizer is None:
        raise CLIError(f"{args.model} has no tokenizer.json; the CLI needs one to encode prompts")
    drafter = make_drafter(args, model, mesh)
    if drafter is not None and policy is None and args.children is not None:
        # --children alone: the drafter's own tree, drafted that way
        policy = dataclasses.replace(drafter.default_policy(), children=args.children)
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
        kv_cache=kv_cache,
        steps_per_sync=args.steps_per_sync,
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
