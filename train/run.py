"""One training run end to end (tokenizer -> data -> train -> export), shared by the CLIs
(`train.target`, `train.draft`), `train.reference` and the GPU script."""

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from specdec import sharding
from specdec.checkpoint import read_config
from train.configs import CONFIGS, TrainConfig, _digest, get_config
from train.data import Source
from train.export import export
from train.files import make_readable
from train.tokenizer import TokenizerConfig, save_tokenizer, train_tokenizer
from train.tokens import REPO_ROOT
from train.trainer import Trainer, TrainResult, compute_dtype, load_data

DEFAULT_TOKENIZERS = REPO_ROOT / "artifacts" / "tokenizers"


def ensure_tokenizer(
    config: TokenizerConfig, out_dir: str | os.PathLike | None = None, *, source: Source = None
) -> Path:
    """A tokenizer directory for `config`: `out_dir` if it holds one, else trained into it.

    The default directory is keyed by the config's contents (artifacts/tokenizers/v<V>-<hash>).
    """
    if out_dir is None:
        key = _digest({**dataclasses.asdict(config), "source": str(source)})
        out_dir = DEFAULT_TOKENIZERS / f"v{config.vocab_size}-{key}"
    out = Path(out_dir)
    if (out / "tokenizer.json").is_file():
        return out
    print(f"training a {config.vocab_size}-token BPE tokenizer into {out}")
    tokenizer = train_tokenizer(config, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    save_tokenizer(tokenizer, tmp, model_max_length=config.model_max_length)
    make_readable(tmp)
    try:
        os.replace(tmp, out)  # atomic; fails if another process got there first
    except OSError:
        shutil.rmtree(tmp)
        if not (out / "tokenizer.json").is_file():
            raise
    return out


def train_and_export(
    cfg: TrainConfig,
    *,
    out_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    teacher_dir: str | os.PathLike | None = None,
    workdir: str | os.PathLike | None = None,
    resume: bool = False,
    time_budget_s: float | None = None,
    export_dtype: str = "float32",
    peak_flops: float | None = None,
    progress: bool = True,
    source: Source = None,
    cache_dir: str | os.PathLike | None = None,
    init_from: str | os.PathLike | None = None,
    eval_exits: bool | None = None,
    mesh=None,
) -> TrainResult:
    """Train `cfg` (distilling from `teacher_dir` if given and cfg.distill_weight > 0), export
    the HF checkpoint to `out_dir` and return the result (also written to out_dir/training.json).

    init_from: an HF checkpoint directory to continue training from (see `Trainer`).
    eval_exits: report held-out perplexity at every exit layer (default: with cfg.layerskip).
    mesh: a (data, model) jax Mesh (specdec.sharding) for data + tensor parallelism."""
    teacher = None
    if teacher_dir is not None and cfg.distill_weight > 0:
        import specdec

        teacher = specdec.load(teacher_dir, dtype=compute_dtype(cfg), attention="xla")
    data = load_data(cfg, tokenizer_dir, source=source, cache_dir=cache_dir)
    print(
        f"{cfg.name}: {cfg.model.num_params() / 1e6:.2f}M params; {len(data.train) / 1e6:.2f}M "
        f"train / {len(data.heldout) / 1e6:.3f}M held-out tokens"
        + (f"; distilling from {teacher_dir} (weight {cfg.distill_weight})" if teacher else "")
        + (f"; continuing from {init_from}" if init_from else "")
        + (f"; {cfg.layerskip}" if cfg.layerskip else "")
    )
    trainer = Trainer(
        cfg,
        data,
        workdir=workdir,
        resume=resume,
        teacher=teacher,
        peak_flops=peak_flops,
        progress=progress,
        init_from=init_from,
        eval_exits=eval_exits,
        mesh=mesh,
    )
    result = trainer.fit(time_budget_s=time_budget_s)
    info = {
        "result": dataclasses.asdict(result),
        "config": dataclasses.asdict(cfg),
        "teacher": str(teacher_dir) if teacher else None,
        "init_from": str(init_from) if init_from else None,
    }
    export(trainer.module(), out_dir, tokenizer_dir, dtype=export_dtype, info=info)
    print(result.summary())
    print(f"exported to {out_dir}")
    return result


# ---- command line ----------------------------------------------------------------------------


def parser(description: str, default_config: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=default_config, choices=sorted(CONFIGS))
    p.add_argument("--out", required=True, help="the exported HF checkpoint directory")
    p.add_argument("--tokenizer", help="a tokenizer directory (trained there if it has none)")
    p.add_argument("--workdir", help="orbax checkpoints (default: <out>.ckpt)")
    p.add_argument("--no-checkpoints", action="store_true", help="keep no orbax checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--steps", type=int, help="override the config's step count")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--save-every", type=int)
    p.add_argument("--time-budget-s", type=float, help="stop cleanly within this wall time")
    p.add_argument("--export-dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--peak-flops", type=float, help="total peak FLOP/s for MFU")
    p.add_argument("--data", help="a ShareGPT-format JSON file (default: the packaged corpus)")
    p.add_argument("--cache-dir", help="token-stream cache (default: artifacts/cache/tokens)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", help="also write the TrainResult here")
    p.add_argument(
        "--mesh",
        metavar="DATAxMODEL",
        help="data x tensor parallel mesh, e.g. 2x4 (default: data parallel over all devices)",
    )
    p.add_argument(
        "--init-from",
        metavar="DIR",
        help="continue training an HF checkpoint directory (its model config and, unless "
        "--tokenizer is given, its tokenizer replace the config's)",
    )
    p.add_argument(
        "--eval-exits",
        action="store_true",
        help="report held-out perplexity at every exit layer (always on with --layerskip)",
    )
    return p


def config_from_args(args: argparse.Namespace, **extra) -> TrainConfig:
    overrides = {
        field: value
        for field, value in (
            ("steps", args.steps),
            ("batch_size", args.batch_size),
            ("seq_len", args.seq_len),
            ("lr", args.lr),
            ("warmup_steps", args.warmup_steps),
            ("eval_every", args.eval_every),
            ("save_every", args.save_every),
            *extra.items(),
        )
        if value is not None
    }
    cfg = get_config(args.config)
    if args.init_from:
        # The checkpoint decides the architecture (and so the vocabulary: its tokenizer's).
        model = read_config(args.init_from)
        overrides["model"] = model
        overrides["tokenizer"] = dataclasses.replace(cfg.tokenizer, vocab_size=model.vocab_size)
    if "steps" in overrides and "warmup_steps" not in overrides:
        overrides["warmup_steps"] = min(cfg.warmup_steps, max(0, overrides["steps"] // 10))
    return cfg.replace(**overrides)


def run_from_args(args: argparse.Namespace, cfg: TrainConfig, tokenizer_dir, teacher_dir=None):
    try:
        args.mesh = sharding.mesh_from_text(getattr(args, "mesh", None))
    except ValueError as error:  # malformed, or more devices than there are
        raise SystemExit(f"error: {error}") from None
    workdir = None if args.no_checkpoints else (args.workdir or f"{args.out.rstrip('/')}.ckpt")
    try:
        result = _train_from_args(args, cfg, tokenizer_dir, teacher_dir, workdir)
    except FileExistsError as error:  # checkpoints present but no --resume: say so, no traceback
        raise SystemExit(f"error: {error}") from None
    if args.json:
        Path(args.json).write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
    return result


def _train_from_args(args, cfg, tokenizer_dir, teacher_dir, workdir) -> TrainResult:
    return train_and_export(
        cfg,
        out_dir=args.out,
        tokenizer_dir=tokenizer_dir,
        teacher_dir=teacher_dir,
        workdir=workdir,
        resume=args.resume,
        time_budget_s=args.time_budget_s,
        export_dtype=args.export_dtype,
        peak_flops=args.peak_flops,
        progress=not args.no_progress,
        source=args.data,
        cache_dir=args.cache_dir,
        init_from=args.init_from,
        eval_exits=True if args.eval_exits else None,
        mesh=args.mesh,
    )
