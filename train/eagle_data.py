"""EAGLE training data: the assistant loss mask, the draft vocabulary, and `--regenerate`.

Token streams are the chat documents of `train.packing` concatenated (`train.tokens`), which carry
no loss mask; the chat format's special tokens delimit turns, so the mask is read off the stream:
position j counts when the distribution after token j predicts an assistant token, i.e. token j is
the `<|assistant|>` role token or inside an assistant turn's text (the turn's `<|end|>` is
predicted, its successor is not). A tokenizer without the chat tokens gives an all-ones mask.

Regeneration (`regenerate_documents`) replaces each assistant turn by the target's own greedy
response to the conversation so far (earlier turns already regenerated), turn by turn across the
whole batch of documents, at the token level (no detokenize/retokenize round trip). Greedy: it is
deterministic, so the cached result is reproducible, and it is what T = 0 acceptance is measured
against. A response ends at the first chat token the target emits (`<|end|>`, or a role or
`<|bos|>` token, which would forge a turn); one cut at `max_new_tokens` still gets its `<|end|>`.
A conversation whose prompt no longer fits the target's context is cut before that turn. Batches
hold at most `batch_size` prompts and `batch_tokens` tokens (prompts padded to their length
bucket plus the reply cap): a prefill's activations grow with both, its attention scores with
B x L^2 when the target computes attention in XLA; one batch size per length bucket
(`regeneration_batches`) compiles one decode loop per bucket.
"""

import os
from collections.abc import Sequence

import numpy as np

from train.chat import BOS, END, ROLE_TOKENS
from train.tokenizer import load_tokenizer


def chat_ids(tokenizer_dir: str | os.PathLike) -> dict[str, int] | None:
    """The chat special tokens' ids ({"bos", "end", "system", "user", "assistant"}), or None when
    the tokenizer lacks them."""
    tokenizer = load_tokenizer(tokenizer_dir)
    names = {"bos": BOS, "end": END, **ROLE_TOKENS}
    ids = {key: tokenizer.token_to_id(token) for key, token in names.items()}
    return None if any(i is None for i in ids.values()) else ids


def assistant_mask(stream: np.ndarray, ids: dict[str, int] | None) -> np.ndarray:
    """uint8 [N]: 1 where the distribution after the token predicts an assistant token."""
    stream = np.asarray(stream)
    if ids is None:
        return np.ones(len(stream), np.uint8)
    special = np.isin(
        stream, [ids["bos"], ids["end"], ids["system"], ids["user"], ids["assistant"]]
    )
    index = np.where(special, np.arange(len(stream)), -1)
    last = np.maximum.accumulate(index)  # [N] the latest special token at or before each position
    opened = (last >= 0) & (stream[np.maximum(last, 0)] == ids["assistant"])
    return opened.astype(np.uint8)


def draft_vocabulary(counts: np.ndarray, size: int) -> np.ndarray:
    """int32 [size], ascending: the `size` target ids of highest counts [V] (`predicted_counts`:
    how often each id is predicted at a masked position), ties to the lower id; unseen ids fill
    up in id order."""
    vocab_size = len(counts)
    if not 1 <= size <= vocab_size:
        raise ValueError(f"draft vocabulary {size=} must be in [1, {vocab_size}]")
    top = np.argsort(-np.asarray(counts), kind="stable")[:size]
    return np.sort(top).astype(np.int32)


def predicted_counts(stream: np.ndarray, mask: np.ndarray, vocab_size: int) -> np.ndarray:
    """int64 [V]: how often each id is the token predicted at a masked position."""
    stream, mask = np.asarray(stream), np.asarray(mask).astype(bool)
    return np.bincount(stream[1:][mask[:-1]], minlength=vocab_size)[:vocab_size]


def draft_vocabulary_size(counts: np.ndarray, coverage: float, cap: int) -> int:
    """The smallest draft vocabulary whose ids (`draft_vocabulary`'s ranking of counts [V]) are
    at least `coverage` of the counted tokens, at most min(cap, V).

    A draft vocabulary bounds acceptance: at T = 0 a position whose target argmax lies outside
    it is never accepted. A fixed fraction of the vocabulary covers very differently: on ShareGPT
    a quarter of a 16k BPE vocabulary (4096 ids) covers 87% of held-out assistant tokens, 8192 ids
    95%."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"draft vocabulary {coverage=} must be in (0, 1]")
    vocab_size = len(counts)
    counts = np.sort(np.asarray(counts))[::-1]
    total = counts.sum()
    if total == 0:
        return max(1, min(cap, vocab_size))
    covered = np.cumsum(counts) / total  # [V] share of the top-n ids
    size = int(np.searchsorted(covered, coverage - 1e-12)) + 1  # first n with covered >= coverage
    return max(1, min(size, cap, vocab_size))


def _turns(document: np.ndarray, ids: dict[str, int]) -> list[tuple[int, np.ndarray]]:
    """(role id, text ids) of each turn of a chat document (bos, then role ... end per turn)."""
    roles = (ids["system"], ids["user"], ids["assistant"])
    starts = [i for i, token in enumerate(document) if token in roles]
    turns = []
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else len(document)
        body = document[start + 1 : stop]
        turns.append(
            (int(document[start]), body[:-1] if len(body) and body[-1] == ids["end"] else body)
        )
    return turns


def _render(turns: Sequence[tuple[int, np.ndarray]], ids: dict[str, int]) -> list[int]:
    out = [ids["bos"]]
    for role, text in turns:
        out += [role, *np.asarray(text).tolist(), ids["end"]]
    return out


def regeneration_batches(
    lengths: Sequence[int], batch_size: int, batch_tokens: int, extra: int = 0
) -> list[tuple[list[int], int]]:
    """(indices, batch) pairs covering every prompt once: prompts grouped by `generate`'s
    prompt-length bucket (a power of two), each group in batches of one size per bucket (the
    largest power of two with at most `batch_size` prompts and batch x (bucket + extra) <=
    `batch_tokens`, at least 1); a group's last batch has fewer indices than `batch` and is
    padded to it by the caller. One batch size per bucket keeps compiles to one per bucket."""
    if batch_size < 1 or batch_tokens < 1:
        raise ValueError(f"{batch_size=} and {batch_tokens=} must be >= 1")
    from specdec.engine.generate import bucket

    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(bucket(n), []).append(i)
    out = []
    for b, members in sorted(groups.items()):
        fit = max(1, min(batch_size, batch_tokens // (b + extra)))
        per = 1 << (fit.bit_length() - 1)  # a power of two <= fit
        out += [(members[i : i + per], per) for i in range(0, len(members), per)]
    return out


def regenerate_documents(
    target,
    documents: Sequence[np.ndarray],
    ids: dict[str, int],
    *,
    max_new_tokens: int,
    batch_size: int,
    batch_tokens: int = 65_536,
    progress: bool = True,
) -> list[np.ndarray]:
    """The documents with every assistant turn replaced by the target's greedy response (see
    module docstring). target: a `specdec.Model`."""
    from tqdm.auto import tqdm

    import specdec

    limit = target.config.max_position_embeddings - max_new_tokens
    stops = sorted(set(ids.values()))  # any chat token ends the reply (it would forge a turn)
    convs = [_turns(np.asarray(d), ids) for d in documents]
    jobs_total = sum(role == ids["assistant"] for turns in convs for role, _ in turns)
    bar = tqdm(total=jobs_total, unit="turn", disable=not progress, desc="regenerate")
    depth = 0
    while True:
        jobs = []  # (conversation, turn index, prompt ids) of each conversation's depth-th reply
        for c, turns in enumerate(convs):
            replies = [j for j, (role, _) in enumerate(turns) if role == ids["assistant"]]
            if depth < len(replies):
                j = replies[depth]
                prompt = [*_render(turns[:j], ids), ids["assistant"]]
                if len(prompt) > limit:
                    convs[c] = turns[:j]  # the rest no longer fits the target's context
                else:
                    jobs.append((c, j, prompt))
        if not jobs:
            break
        jobs.sort(key=lambda job: len(job[2]))  # similar lengths share a batch: less padding
        lengths = [len(prompt) for _, _, prompt in jobs]
        for indices, size in regeneration_batches(
            lengths, batch_size, batch_tokens, extra=max_new_tokens
        ):
            chunk = [jobs[i] for i in indices]
            prompts = [prompt for _, _, prompt in chunk]
            prompts += [prompts[-1]] * (size - len(prompts))  # padding rows, replies dropped
            out = specdec.generate(
                target, prompts, max_new_tokens=max_new_tokens, eos_token_id=stops
            )
            replies = out.sequences()[: len(chunk)]
            for (c, j, _), reply in zip(chunk, replies, strict=True):
                reply = reply[:-1] if reply and reply[-1] in stops else reply
                convs[c][j] = (ids["assistant"], np.asarray(reply, np.int32))
            bar.update(len(chunk))
        depth += 1
    bar.close()
    return [np.asarray(_render(turns, ids), np.int32) for turns in convs if turns]
