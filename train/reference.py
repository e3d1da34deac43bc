"""The reference target/draft pair: trained on first use, then cached under artifacts/reference/.

    target_dir, draft_dir = reference_pair("tiny")   # ~5 minutes on a 2-core CPU the first time
    target, draft = specdec.load(target_dir), specdec.load(draft_dir)

The cache is keyed by the pair's configs (every field), so changing a config trains a new pair
instead of returning a stale one. Each checkpoint directory is written elsewhere and renamed into
place, a file lock serialises concurrent first uses, and an interrupted first use resumes from its
orbax checkpoints: calling this twice, or from two processes at once, is safe.
"""

import fcntl
import os
import shutil
from pathlib import Path

from train.configs import TrainConfig, _digest, get_config
from train.data import Source
from train.run import ensure_tokenizer, train_and_export
from train.tokens import REPO_ROOT

DEFAULT_ROOT = REPO_ROOT / "artifacts" / "reference"
PAIRS = {"tiny": ("tiny", "tiny-draft"), "small": ("small", "small-draft")}


def reference_pair(
    kind: str = "tiny", *, root: str | os.PathLike | None = None, progress: bool = False
) -> tuple[Path, Path]:
    """(target_dir, draft_dir) of the named reference pair, training it if it is not cached."""
    if kind not in PAIRS:
        raise ValueError(f"unknown reference pair {kind!r}; known: {sorted(PAIRS)}")
    target, draft = (get_config(name) for name in PAIRS[kind])
    return build_pair(target, draft, root=root, progress=progress)


def _complete(directory: Path) -> bool:
    return all(
        (directory / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json")
    )


def build_pair(
    target_cfg: TrainConfig,
    draft_cfg: TrainConfig,
    *,
    root: str | os.PathLike | None = None,
    source: Source = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> tuple[Path, Path]:
    """Train (or find cached) a target and a draft distilled from it; see module docstring.

    source: the ShareGPT file (None: the packaged one). cache_dir: token-stream cache.
    """
    root = Path(root or DEFAULT_ROOT)
    key = _digest(
        {
            "target": target_cfg.to_dict(),
            "draft": draft_cfg.to_dict(),
            "source": str(source),
        }
    )
    pair = root / f"{target_cfg.name}-{key}"
    target_dir, draft_dir = pair / "target", pair / "draft"
    if _complete(target_dir) and _complete(draft_dir):
        return target_dir, draft_dir
    pair.mkdir(parents=True, exist_ok=True)
    with open(pair / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be training this pair: wait
        tokenizer_dir = ensure_tokenizer(target_cfg.tokenizer, pair / "tokenizer", source=source)
        for cfg, out, teacher in (
            (target_cfg, target_dir, None),
            (draft_cfg, draft_dir, target_dir),
        ):
            if _complete(out):
                continue
            workdir = pair / f".work-{out.name}"
            train_and_export(
                cfg,
                out_dir=out,
                tokenizer_dir=teacher or tokenizer_dir,
                teacher_dir=teacher,
                workdir=workdir,
                resume=True,
                progress=progress,
                source=source,
                cache_dir=cache_dir,
            )
            shutil.rmtree(workdir, ignore_errors=True)
    return target_dir, draft_dir
