"""Streaming tokenization and packing of conversations into fixed-shape int32 training batches.

Pipeline (generators throughout: memory holds one shuffle buffer of documents plus one batch):

    conversations -> token documents -> buffered shuffle (seeded) -> token stream -> [B, L+1] rows

Documents: `encode_chat` gives `<|bos|>` + per turn (role token, text tokens, `<|end|>`): the ids
of `render_chat(turns)`, as `AutoTokenizer.apply_chat_template` gives them. Message text is encoded
with special-token matching off, so a message that happens to contain "<|user|>" stays plain text
instead of forging a turn boundary. Every document starts with `<|bos|>`; a trainer that wants to
stop attention across documents can derive segment ids from the bos positions.

Packing: the documents are concatenated into one stream and cut into rows of L+1 tokens with
stride L (row r is stream[r*L : r*L + L + 1]; inputs row[:-1], targets row[1:]), so every token
after the first is a target exactly once. Batch b holds rows [b*B, (b+1)*B). The last, partial
batch is dropped.

Data parallelism: every process runs the same stream and keeps its B/P rows
[process_index * B/P, (process_index + 1) * B/P) of each global batch, so the global batches do
not depend on the process count. Resuming: `skip_batches=n` drops the first n*B*L stream tokens;
that still tokenizes those documents (the shuffle depends on them) but builds no batches.
"""

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from train.chat import BOS, END, ROLE_TOKENS, Turn
from train.data import Conversation, iter_epochs


@dataclass(frozen=True)
class PackingConfig:
    batch_size: int  # B: rows per global batch, over all processes together
    seq_len: int  # L: a row holds L + 1 tokens (inputs row[:-1], targets row[1:])
    seed: int = 0  # seeds the document shuffle: the same seed gives the same batches
    shuffle_buffer: int = 1024  # documents held for the buffered shuffle; 0 keeps corpus order
    encode_batch: int = 64  # conversations per call into the (multi-threaded) Rust tokenizer
    process_index: int = 0  # this process's index among `process_count` data-parallel processes
    process_count: int = 1

    def __post_init__(self):
        if self.batch_size < 1 or self.seq_len < 1:
            raise ValueError(f"{self.batch_size=} and {self.seq_len=} must be positive")
        if self.batch_size % self.process_count:
            raise ValueError(f"{self.batch_size=} must be a multiple of {self.process_count=}")
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"{self.process_index=} must be in [0, {self.process_count=})")
        if self.shuffle_buffer < 0 or self.encode_batch < 1:
            raise ValueError(f"{self.shuffle_buffer=} must be >= 0 and {self.encode_batch=} >= 1")

    @property
    def local_batch_size(self) -> int:
        """Rows of each batch that this process gets."""
        return self.batch_size // self.process_count


class ChatEncoder:
    """Encodes conversations into document ids; holds a copy of the tokenizer with special-token
    matching off for message text (the caller's tokenizer is left untouched)."""

    def __init__(self, tokenizer: Tokenizer):
        self._text = Tokenizer.from_str(tokenizer.to_str())
        self._text.encode_special_tokens = True
        ids = {token: tokenizer.token_to_id(token) for token in (BOS, END, *ROLE_TOKENS.values())}
        if missing := [token for token, i in ids.items() if i is None]:
            raise ValueError(f"the tokenizer lacks the chat special tokens {missing}")
        self._bos, self._end = ids[BOS], ids[END]
        self._role = {role: ids[token] for role, token in ROLE_TOKENS.items()}

    def encode_many(self, conversations: Sequence[Sequence[Turn]]) -> list[np.ndarray]:
        """One int32 document per conversation, all turn texts encoded in one batched call."""
        texts = [text for turns in conversations for _, text in turns]
        encoded = iter(self._text.encode_batch_fast(texts, add_special_tokens=False))
        documents = []
        for turns in conversations:
            ids = [self._bos]
            for role, _ in turns:
                ids.append(self._role[role])
                ids += next(encoded).ids
                ids.append(self._end)
            documents.append(np.asarray(ids, dtype=np.int32))
        return documents


def encode_chat(tokenizer: Tokenizer, turns: Sequence[Turn]) -> np.ndarray:
    """int32 [n]: the ids of one conversation (see module docstring)."""
    return ChatEncoder(tokenizer).encode_many([turns])[0]


def tokenize_conversations(
    tokenizer: Tokenizer, conversations: Iterable[Conversation], *, encode_batch: int = 64
) -> Iterator[np.ndarray]:
    """One int32 document per conversation, in order."""
    encoder = ChatEncoder(tokenizer)
    group: list[tuple[Turn, ...]] = []
    for conversation in conversations:
        group.append(conversation.turns)
        if len(group) == encode_batch:
            yield from encoder.encode_many(group)
            group = []
    if group:
        yield from encoder.encode_many(group)


def shuffled[T](items: Iterable[T], buffer_size: int, rng: np.random.Generator) -> Iterator[T]:
    """Buffered shuffle: each item waits in a `buffer_size` pool and leaves at a random time."""
    if buffer_size == 0:
        yield from items
        return
    pool: list[T] = []
    for item in items:
        if len(pool) < buffer_size:
            pool.append(item)
            continue
        i = rng.integers(len(pool))
        yield pool[i]
        pool[i] = item
    for i in rng.permutation(len(pool)):
        yield pool[i]


def pack_documents(
    documents: Iterable[np.ndarray], config: PackingConfig, *, skip_batches: int = 0
) -> Iterator[np.ndarray]:
    """int32 [B/P, L+1] batches cut from the concatenated documents (see module docstring)."""
    if skip_batches < 0:
        raise ValueError(f"{skip_batches=} must be >= 0")
    length, step = (
        config.seq_len,
        config.batch_size * config.seq_len,
    )  # a batch advances `step` tokens
    first_row = config.process_index * config.local_batch_size
    to_skip = skip_batches * step
    pending: list[np.ndarray] = []  # stream tokens not yet in a batch (the last one is shared)
    have = 0
    for doc in documents:
        if to_skip:
            if len(doc) <= to_skip:
                to_skip -= len(doc)
                continue
            doc, to_skip = doc[to_skip:], 0
        pending.append(doc)
        have += len(doc)
        if have < step + 1:
            continue
        stream = np.concatenate(pending)  # [have]
        n_batches = (have - 1) // step
        for b in range(n_batches):
            window = stream[b * step : (b + 1) * step + 1]  # [B*L + 1]
            rows = np.lib.stride_tricks.sliding_window_view(window, length + 1)[
                ::length
            ]  # [B, L+1]
            yield np.array(rows[first_row : first_row + config.local_batch_size], dtype=np.int32)
        pending = [stream[n_batches * step :].copy()]  # the copy lets the big stream array go
        have = len(pending[0])


def pack_batches(
    tokenizer: Tokenizer,
    conversations: Iterable[Conversation],
    config: PackingConfig,
    *,
    skip_batches: int = 0,
) -> Iterator[np.ndarray]:
    """int32 [B/P, L+1] training batches from a conversation stream: tokenize, shuffle, pack."""
    rng = np.random.default_rng(config.seed)
    documents = tokenize_conversations(tokenizer, conversations, encode_batch=config.encode_batch)
    return pack_documents(
        shuffled(documents, config.shuffle_buffer, rng), config, skip_batches=skip_batches
    )


def train_batches(
    tokenizer: Tokenizer,
    config: PackingConfig,
    *,
    epochs: int | None = None,
    skip_batches: int = 0,
    source: str | os.PathLike | None = None,
) -> Iterator[np.ndarray]:
    """int32 [B/P, L+1] batches from the ShareGPT train split, `epochs` passes (None: forever).

    The shuffle's generator runs on across epochs: each epoch's order differs, deterministically.
    """
    conversations = iter_epochs("train", epochs=epochs, source=source)
    return pack_batches(tokenizer, conversations, config, skip_batches=skip_batches)
