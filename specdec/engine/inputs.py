"""Validation of `generate`'s arguments: every bad input is a ValueError (or TypeError for a wrong
object type) that names the argument and the value, checked in the precision the loop uses."""

from collections.abc import Sequence

import numpy as np

MAX_EOS_IDS = 8
INT32_MAX = 2**31 - 1


def is_integer(value) -> bool:
    """A Python or numpy integer (bool excluded)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_int(name: str, value, low: int, high: int = INT32_MAX) -> int:
    """`value` as an int in [low, high], else a ValueError naming it."""
    if not is_integer(value) or not low <= int(value) <= high:
        bound = f"in [{low}, {high}]" if high < INT32_MAX else f">= {low}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def prompts(input_ids, vocab_size: int) -> list[list[int]]:
    """input_ids (list of token-id lists, or an int array [B, L] / [L]) as validated lists."""
    if isinstance(input_ids, np.ndarray) or hasattr(input_ids, "__array__"):
        arr = np.asarray(input_ids)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2:
            raise ValueError(f"input_ids array must be [B, L], got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"input_ids must hold integer token ids, got dtype {arr.dtype}")
        rows = [row.tolist() for row in arr]
    elif isinstance(input_ids, Sequence) and not isinstance(input_ids, str | bytes):
        if input_ids and all(is_integer(t) for t in input_ids):
            rows = [list(input_ids)]
        else:
            rows = [
                list(p) if isinstance(p, Sequence | np.ndarray) and not isinstance(p, str) else p
                for p in input_ids
            ]
    else:
        raise ValueError(
            f"input_ids must be a list of token-id lists or an int array, "
            f"got {type(input_ids).__name__}"
        )
    if not rows:
        raise ValueError("input_ids is empty: give at least one prompt")
    for i, prompt in enumerate(rows):
        if not isinstance(prompt, list):
            raise ValueError(f"prompt {i} must be a list of token ids, got {type(prompt).__name__}")
        if not prompt:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
        for tok in prompt:
            if not is_integer(tok):
                raise ValueError(f"prompt {i} holds a non-integer token {tok!r}")
            if not 0 <= tok < vocab_size:
                raise ValueError(
                    f"prompt {i} holds token id {tok}, outside the vocabulary [0, {vocab_size})"
                )
    return [[int(t) for t in p] for p in rows]


def eos_ids(eos_token_id, vocab_size: int) -> np.ndarray:
    """eos_token_id (None, an int, or a sequence of ints) as int32 [MAX_EOS_IDS], -1 = unused."""
    if eos_token_id is None:
        ids = []
    elif is_integer(eos_token_id):
        ids = [eos_token_id]
    elif isinstance(eos_token_id, Sequence | np.ndarray) and not isinstance(
        eos_token_id, str | bytes
    ):
        ids = list(eos_token_id)
    else:
        raise ValueError(
            f"eos_token_id must be None, an integer token id or a list of them, "
            f"got {eos_token_id!r}"
        )
    if len(ids) > MAX_EOS_IDS:
        raise ValueError(f"at most {MAX_EOS_IDS} eos_token_id values are supported, got {len(ids)}")
    for t in ids:
        if not is_integer(t):
            raise ValueError(f"eos_token_id values must be integer token ids, got {t!r}")
        if not 0 <= t < vocab_size:
            raise ValueError(f"eos_token_id {t} is outside the vocabulary [0, {vocab_size})")
    return np.array([int(t) for t in ids] + [-1] * (MAX_EOS_IDS - len(ids)), np.int32)


def seed(value) -> int:
    return check_int("seed", value, 0)


def pad_token_id(value) -> int:
    return check_int("pad_token_id", value, -(2**31))


def lengths(
    longest_prompt: int,
    max_new_tokens,
    tree_nodes: int,
    max_position_embeddings: int,
    allow_beyond_max_position: bool,
    max_cache_len,
    sliding_window: int | None,
) -> int:
    """Validate the request's length; returns the cache slots it needs per sequence."""
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, 1)
    positions = longest_prompt + max_new_tokens
    if positions > max_position_embeddings and not allow_beyond_max_position:
        raise ValueError(
            f"prompt ({longest_prompt} tokens) + max_new_tokens ({max_new_tokens}) = {positions} "
            f"positions exceeds the model's max_position_embeddings {max_position_embeddings}; "
            f"pass allow_beyond_max_position=True to generate past it anyway"
        )
    needed = longest_prompt + max_new_tokens + tree_nodes
    if max_cache_len is not None:
        max_cache_len = check_int("max_cache_len", max_cache_len, 1)
        if needed > max_cache_len:
            raise ValueError(
                f"the request needs {needed} cache slots per sequence (prompt {longest_prompt} + "
                f"max_new_tokens {max_new_tokens} + draft tree {tree_nodes}) but max_cache_len "
                f"is {max_cache_len}"
            )
    if sliding_window is not None and needed > sliding_window:
        raise ValueError(
            f"the request spans {needed} positions but the model's sliding_window is "
            f"{sliding_window}; windowed attention is not implemented"
        )
    return needed


def memory(batch: int, slots: int, bytes_per_slot: int, limit_bytes: int | None) -> None:
    """A request whose target cache alone exceeds the device memory is a clear error, not OOM."""
    need = batch * slots * bytes_per_slot
    if limit_bytes is not None and need > limit_bytes:
        raise ValueError(
            f"the request's target KV cache needs {need / 2**30:.1f} GiB (batch {batch} x "
            f"{slots} slots) but the device has {limit_bytes / 2**30:.1f} GiB; lower "
            f"max_new_tokens, the prompt length or the batch"
        )
