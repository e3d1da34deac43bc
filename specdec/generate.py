"""`specdec.generate`: validated inputs -> one compiled decode loop -> tokens, lengths and stats.

Compiles are keyed by the static shape (batch, prompt-length bucket, new-token bucket, tree size)
and the drafter/policy structure; prompts within a bucket, seeds and sampling values reuse the
compiled loop. Timing excludes compilation (reported separately).
"""

import dataclasses
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from drafters.base import Drafter
from specdec.attention import kernel_slots
from specdec.cache import KVCache
from specdec.decode import LoopShape, decode_loop
from specdec.models import Model
from specdec.sampling import SamplingParams, validate
from trees.policy import Policy
from trees.static import Chain

MIN_BUCKET = 16
MAX_EOS_IDS = 8


@dataclasses.dataclass(frozen=True)
class GenerateStats:
    """Speed and acceptance of one generate call. tau counts the bonus token."""

    wall_seconds: float  # prefill + decode, compilation excluded
    compile_seconds: float  # 0.0 when the compiled loop was reused
    new_tokens: int  # total over the batch
    tokens_per_second: float  # new_tokens / wall_seconds (all sequences together)
    target_forwards: int  # batched target forwards after prefill
    tau: float  # tokens emitted per target forward per sequence, bonus included
    acceptance_by_depth: tuple[float, ...]  # P(draft at depth d accepted | depth d-1 accepted)
    accepted_length_histogram: tuple[int, ...]  # steps (summed over sequences) accepting n drafts

    def summary(self) -> str:
        return (
            f"{self.new_tokens} tokens in {self.wall_seconds:.3f}s = "
            f"{self.tokens_per_second:.1f} tok/s, "
            f"tau {self.tau:.2f}, {self.target_forwards} target forwards"
            + (f", compiled in {self.compile_seconds:.1f}s" if self.compile_seconds else "")
        )


@dataclasses.dataclass(frozen=True)
class GenerateOutput:
    """New tokens only. tokens[b, lengths[b]:] is padding (pad_token_id)."""

    tokens: np.ndarray  # [B, max_new_tokens] int32
    lengths: np.ndarray  # [B] int32, including a final EOS if one was produced
    stats: GenerateStats

    def sequences(self) -> list[list[int]]:
        """The new tokens of each sequence as Python lists (padding removed)."""
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths, strict=True)]


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """Smallest power of two >= max(n, minimum)."""
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


_COMPILED: dict = {}
_JITTED = jax.jit(decode_loop, static_argnames=("policy", "shape"), donate_argnums=(2, 3))


def compile_count() -> int:
    """How many decode loops have been compiled in this process (for no-recompile tests)."""
    return len(_COMPILED)


def _normalize_prompts(input_ids, vocab_size: int) -> list[list[int]]:
    if isinstance(input_ids, np.ndarray | jax.Array):
        arr = np.asarray(input_ids)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2:
            raise ValueError(f"input_ids array must be [B, L], got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"input_ids must hold integer token ids, got dtype {arr.dtype}")
        prompts = [row.tolist() for row in arr]
    elif isinstance(input_ids, Sequence) and not isinstance(input_ids, str):
        if input_ids and all(isinstance(t, int | np.integer) for t in input_ids):
            prompts = [list(input_ids)]
        else:
            prompts = [
                list(p) if isinstance(p, Sequence | np.ndarray) and not isinstance(p, str) else p
                for p in input_ids
            ]
    else:
        raise ValueError(
            f"input_ids must be a list of token-id lists or an int array, "
            f"got {type(input_ids).__name__}"
        )
    if not prompts:
        raise ValueError("input_ids is empty: give at least one prompt")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, list):
            raise ValueError(f"prompt {i} must be a list of token ids, got {type(prompt).__name__}")
        if not prompt:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
        for tok in prompt:
            if isinstance(tok, bool) or not isinstance(tok, int | np.integer):
                raise ValueError(f"prompt {i} holds a non-integer token {tok!r}")
            if not 0 <= tok < vocab_size:
                raise ValueError(
                    f"prompt {i} holds token id {tok}, outside the vocabulary [0, {vocab_size})"
                )
    return [[int(t) for t in p] for p in prompts]


def _eos_array(eos_token_id, vocab_size: int) -> np.ndarray:
    if eos_token_id is None:
        ids: list[int] = []
    elif isinstance(eos_token_id, int | np.integer) and not isinstance(eos_token_id, bool):
        ids = [int(eos_token_id)]
    else:
        ids = [int(t) for t in eos_token_id]
    if len(ids) > MAX_EOS_IDS:
        raise ValueError(f"at most {MAX_EOS_IDS} eos_token_id values are supported, got {len(ids)}")
    for t in ids:
        if not 0 <= t < vocab_size:
            raise ValueError(f"eos_token_id {t} is outside the vocabulary [0, {vocab_size})")
    return np.array(ids + [-1] * (MAX_EOS_IDS - len(ids)), np.int32)


def generate(
    model: Model,
    input_ids,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    drafter: Drafter | None = None,
    policy: Policy | None = None,
    pad_token_id: int = 0,
    max_cache_len: int | None = None,
) -> GenerateOutput:
    """Generate up to max_new_tokens new tokens per prompt (speculatively when given a drafter).

    input_ids: a list of token-id lists (ragged lengths allowed) or an int array [B, L].
    temperature 0 is greedy; top_k 0 and top_p 1 disable those filters. With a drafter, `policy`
    shapes the draft tree (default Chain(4)); output is distributed exactly as plain decoding's.
    max_cache_len: optional cap on cache slots per sequence; a request that needs more is an error.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a specdec.Model, got {type(model).__name__}")
    cfg = model.config
    prompts = _normalize_prompts(input_ids, cfg.vocab_size)
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int | np.integer)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    validate(temperature, top_k, top_p)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**31:
        raise ValueError(f"seed must be an integer in [0, 2**31), got {seed!r}")
    eos = _eos_array(eos_token_id, cfg.vocab_size)
    if policy is not None and drafter is None:
        raise ValueError(
            "a tree policy was given without a drafter; pass drafter=... or drop policy"
        )
    if drafter is not None:
        if not isinstance(drafter, Drafter):
            raise TypeError(f"drafter must be a drafters.Drafter, got {type(drafter).__name__}")
        policy = policy or Chain(4)
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a trees policy, got {type(policy).__name__}")
        drafter.check(cfg, model.tokenizer, policy)
    tree_nodes = policy.max_nodes if drafter is not None else 1

    longest = max(len(p) for p in prompts)
    needed = longest + max_new_tokens + tree_nodes
    if max_cache_len is not None and needed > max_cache_len:
        raise ValueError(
            f"the request needs {needed} cache slots per sequence (prompt {longest} + "
            f"max_new_tokens {max_new_tokens} + draft tree {tree_nodes}) but max_cache_len is "
            f"{max_cache_len}"
        )
    if cfg.sliding_window is not None and needed > cfg.sliding_window:
        raise ValueError(
            f"the request spans {needed} positions but the model's sliding_window is "
            f"{cfg.sliding_window}; windowed attention is not implemented"
        )

    shape = LoopShape(
        batch=len(prompts),
        prompt_len=bucket(longest),
        max_new=bucket(max_new_tokens),
        capacity=0,
        tree_nodes=tree_nodes,
    )
    capacity = shape.prompt_len + shape.max_new + tree_nodes
    capacity = kernel_slots(capacity)  # so attention kernels tile S
    shape = dataclasses.replace(shape, capacity=capacity)
    prompt = np.zeros((shape.batch, shape.prompt_len), np.int32)
    for i, p in enumerate(prompts):
        prompt[i, : len(p)] = p
    prompt_lens = np.array([len(p) for p in prompts], np.int32)

    cache = KVCache.create(
        cfg.num_layers, shape.batch, shape.capacity, cfg.num_kv_heads, cfg.head_dim, model.dtype
    )
    drafter_state = drafter.init_state(shape.batch, shape.capacity, policy) if drafter else ()
    args = (
        model.net,
        drafter,
        cache,
        drafter_state,
        jnp.asarray(prompt),
        jnp.asarray(prompt_lens),
        jnp.int32(max_new_tokens),
        SamplingParams.create(temperature, top_k, top_p),
        jnp.int32(seed),
        jnp.asarray(eos),
    )

    leaves, treedef = jax.tree.flatten(args)
    key = (treedef, tuple((x.shape, x.dtype) for x in leaves), policy, shape)
    compile_seconds = 0.0
    if key not in _COMPILED:
        start = time.perf_counter()
        _COMPILED[key] = _JITTED.lower(*args, policy=policy, shape=shape).compile()
        compile_seconds = time.perf_counter() - start

    start = time.perf_counter()
    out = _COMPILED[key](*args)
    # Only the small outputs come back to the host; the caches stay on device and are freed.
    out = jax.device_get(dataclasses.replace(out, cache=None, drafter_state=None))
    wall = time.perf_counter() - start
    return _finish(out, prompt_lens, max_new_tokens, pad_token_id, wall, compile_seconds)


def _finish(
    out, prompt_lens, max_new_tokens, pad_token_id, wall, compile_seconds
) -> GenerateOutput:
    lengths = np.asarray(out.num_generated, np.int32)
    tokens = np.full((len(prompt_lens), max_new_tokens), pad_token_id, np.int32)
    for b, start in enumerate(prompt_lens):
        tokens[b, : lengths[b]] = out.history[b, start : start + lengths[b]]
    hist = np.asarray(out.accept_hist).sum(axis=0)  # [T]
    forwards = int(np.asarray(out.forwards).sum())
    emitted = int(sum((n + 1) * c for n, c in enumerate(hist)))
    reached = [int(hist[d:].sum()) for d in range(len(hist))]  # steps accepting >= d drafts
    by_depth = tuple(
        reached[d] / reached[d - 1] if reached[d - 1] else 0.0 for d in range(1, len(hist))
    )
    new_tokens = int(lengths.sum())
    stats = GenerateStats(
        wall_seconds=wall,
        compile_seconds=compile_seconds,
        new_tokens=new_tokens,
        tokens_per_second=new_tokens / wall if wall > 0 else float("inf"),
        target_forwards=int(out.steps),
        tau=emitted / forwards if forwards else 0.0,
        acceptance_by_depth=by_depth,
        accepted_length_histogram=tuple(int(c) for c in hist),
    )
    return GenerateOutput(tokens=tokens, lengths=lengths, stats=stats)
