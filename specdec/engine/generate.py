"""`specdec.generate`: validated inputs -> one compiled decode loop -> tokens, lengths and stats.

Compiles are keyed by the static shape (batch, prompt-length bucket, new-token bucket, tree size)
and the drafter/policy structure; prompts within a bucket, seeds and sampling values reuse the
compiled loop, and at most `compiled_cache_size()` compiled loops are kept (least recently used
evicted). Timing excludes compilation (reported separately).
"""

import collections
import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specdec import sharding
from specdec.attention import CAUSAL_ENV, kernel_slots
from specdec.cache import KV_WRITE_ENV, KVCache
from specdec.contract import Drafter, Policy
from specdec.engine import inputs
from specdec.engine.loop import LoopShape, decode_loop
from specdec.models import Model
from specdec.projection import SKINNY_ENV
from specdec.quant_cache import QuantKV, cache_bytes_per_token, make_cache, request_mode
from specdec.sampling import SamplingParams, validate

MIN_BUCKET = 16
DEFAULT_COMPILED_CACHE_SIZE = 32


@dataclasses.dataclass(frozen=True)
class GenerateStats:
    """Speed and acceptance of one generate call. tau counts the bonus token.

    tau and the histogram count tokens actually emitted (a block cut by EOS or max_new_tokens
    counts only what it emitted); acceptance_by_depth reads the verifier's verdicts, which say how
    far the drafts matched even when the block was then cut.
    """

    wall_seconds: float  # prefill + decode, compilation excluded
    compile_seconds: float  # 0.0 when the compiled loop was reused
    new_tokens: int  # total over the batch
    tokens_per_second: float  # new_tokens / wall_seconds (all sequences together)
    target_forwards: int  # batched target forwards after prefill
    tau: float  # tokens emitted per target forward per sequence, bonus included (prefill excluded)
    acceptance_by_depth: tuple[float, ...]  # [d - 1]: P(depth-d draft accepted | depth d-1 was),
    #                                         for d = 1 .. the policy's max depth
    accepted_length_histogram: tuple[int, ...]  # [n]: steps (summed over sequences) that emitted
    #                                             n drafts plus the bonus (n + 1 tokens)

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


class CompiledLoops:
    """Compiled decode loops keyed by (argument structure, policy, shape), least recently used
    evicted beyond `maxsize`, so a long-lived process does not grow without limit."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.compiles = 0  # loops compiled in this process (evicted ones included)
        self._loops: collections.OrderedDict = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._loops)

    def get(self, key, compile_fn):
        """(compiled loop, seconds spent compiling: 0.0 when reused)."""
        if key in self._loops:
            self._loops.move_to_end(key)
            return self._loops[key], 0.0
        start = time.perf_counter()
        loop = compile_fn()
        seconds = time.perf_counter() - start
        self.compiles += 1
        self._loops[key] = loop
        while len(self._loops) > self.maxsize:
            self._loops.popitem(last=False)
        return loop, seconds


# Environment settings read while a loop is traced (which kernel a projection, the cache write or
# causal attention uses): part of a compiled loop's key and of the jit's static arguments, so a
# setting changed within a process compiles a new loop instead of reusing one traced under the old.
TRACE_ENVS = (SKINNY_ENV, KV_WRITE_ENV, CAUSAL_ENV)


def trace_settings() -> tuple[tuple[str, str | None], ...]:
    """The TRACE_ENVS settings now: (name, value or None) pairs."""
    return tuple((name, os.environ.get(name)) for name in TRACE_ENVS)


def _traced_loop(*args, policy, shape, settings):
    """decode_loop; `settings` (trace_settings()) only keys the jit's trace cache."""
    del settings
    return decode_loop(*args, policy=policy, shape=shape)


_LOOPS = CompiledLoops(DEFAULT_COMPILED_CACHE_SIZE)
_JITTED = jax.jit(
    _traced_loop, static_argnames=("policy", "shape", "settings"), donate_argnums=(2, 3)
)


def compile_count() -> int:
    """How many decode loops have been compiled in this process (for no-recompile tests)."""
    return _LOOPS.compiles


def clear_compiled_loops() -> None:
    """Drop every kept compiled loop (their executables and memory mappings are freed)."""
    _LOOPS._loops.clear()


def compiled_cache_size(maxsize: int | None = None) -> int:
    """The number of compiled loops kept (LRU); with `maxsize`, set it first (>= 1)."""
    if maxsize is not None:
        _LOOPS.maxsize = inputs.check_int("maxsize", maxsize, 1)
        while len(_LOOPS._loops) > _LOOPS.maxsize:
            _LOOPS._loops.popitem(last=False)
    return _LOOPS.maxsize


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A validated request, ready for `decode_loop(*args, policy=policy, shape=shape)`."""

    args: tuple  # (target net, drafter, cache, drafter_state, prompt, prompt_lens, max_new,
    #               sampling params, seed, eos ids)
    policy: Policy | None
    shape: LoopShape
    prompt_lens: np.ndarray  # [B] int32


def prepare(
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
    max_cache_len: int | None = None,
    allow_beyond_max_position: bool = False,
    kv_cache: str | QuantKV | None = None,
    steps_per_sync: int = 1,
) -> Prepared:
    """Validate a request and build the decode loop's arguments (see `generate`)."""
    if not isinstance(model, Model):
        raise TypeError(f"model must be a specdec.Model, got {type(model).__name__}")
    cfg = model.config
    prompts = inputs.prompts(input_ids, cfg.vocab_size)
    validate(temperature, top_k, top_p)
    seed = inputs.seed(seed)
    eos = inputs.eos_ids(eos_token_id, cfg.vocab_size)
    if policy is not None and drafter is None:
        raise ValueError(
            "a tree policy was given without a drafter; pass drafter=... or drop policy"
        )
    if drafter is not None:
        if not isinstance(drafter, Drafter):
            raise TypeError(f"drafter must be a drafters.Drafter, got {type(drafter).__name__}")
        policy = policy if policy is not None else drafter.default_policy()
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a trees policy, got {type(policy).__name__}")
        policy = policy.bind(drafter, cfg)  # settings left to the drafter (Adaptive's cost)
        policy.check(cfg.vocab_size)
        drafter.check(cfg, model.tokenizer, policy)
    tree_nodes = policy.max_nodes if drafter is not None else 1
    # Region slots a step may write: the verified tree, or the drafter's larger working tree.
    region_nodes = max(tree_nodes, policy.draft_nodes) if drafter is not None else 1

    longest = max(len(p) for p in prompts)
    inputs.lengths(
        longest,
        max_new_tokens,
        region_nodes,
        cfg.max_position_embeddings,
        bool(allow_beyond_max_position),
        max_cache_len,
        cfg.sliding_window,
    )
    shape = LoopShape(
        batch=len(prompts),
        prompt_len=bucket(longest),
        max_new=bucket(max_new_tokens),
        capacity=0,
        tree_nodes=tree_nodes,
        tree_depth=policy.max_depth if drafter is not None else 0,
        steps_per_sync=inputs.check_int("steps_per_sync", steps_per_sync, 1),
    )
    kv_mode = request_mode(kv_cache, drafter, shape.tree_depth, cfg.head_dim, model.mesh)
    capacity = kernel_slots(shape.prompt_len + shape.max_new + region_nodes)  # kernels tile S
    capacity = capacity if kv_mode is None else kv_mode.capacity(capacity)
    shape = dataclasses.replace(shape, capacity=capacity)
    mesh = model.mesh
    if mesh is not None:  # data parallel: each device holds B / data sequences
        sharding.check_batch(shape.batch, mesh)
    # target K and V per slot, plus the int32 token history (per device on a mesh: a device
    # holds B / data rows and K / model heads)
    data, split = (1, 1) if mesh is None else (mesh.shape["data"], mesh.shape["model"])
    kv_bytes = math.ceil(
        cache_bytes_per_token(kv_mode, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, model.dtype)
    )
    inputs.memory(shape.batch // data, capacity, kv_bytes // split + 4, _device_memory())
    prompt = np.zeros((shape.batch, shape.prompt_len), np.int32)
    for i, p in enumerate(prompts):
        prompt[i, : len(p)] = p
    prompt_lens = np.array([len(p) for p in prompts], np.int32)

    new_cache = lambda: KVCache.create(
        cfg.num_layers, shape.batch, shape.capacity, cfg.num_kv_heads, cfg.head_dim, model.dtype
    )
    if kv_mode is not None:  # the hierarchical INT4/INT8 cache (specdec.quant_cache)
        new_cache = lambda: make_cache(
            kv_mode, cfg, shape.batch, shape.capacity, region_nodes, model.dtype
        )
    new_state = lambda: drafter.init_state(shape.batch, shape.capacity, policy) if drafter else ()
    if mesh is None:
        cache, drafter_state, put = new_cache(), new_state(), jnp.asarray
    else:  # created directly sharded; a drafter not yet on the mesh is replicated onto it
        cache = sharding.create_state(new_cache, mesh, shape.batch)
        drafter_state = sharding.create_state(new_state, mesh, shape.batch)
        drafter = sharding.place(drafter, mesh) if drafter is not None else None
        put = lambda array: sharding.put_batch(array, mesh)
    args = (
        model.net,
        drafter,
        cache,
        drafter_state,
        put(prompt),
        put(prompt_lens),
        jnp.int32(max_new_tokens),
        SamplingParams.create(temperature, top_k, top_p),
        jnp.int32(seed),
        jnp.asarray(eos),
    )

    return Prepared(args=args, policy=policy, shape=shape, prompt_lens=prompt_lens)


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
    allow_beyond_max_position: bool = False,
    kv_cache: str | QuantKV | None = None,
    steps_per_sync: int = 1,
) -> GenerateOutput:
    """Generate up to max_new_tokens new tokens per prompt (speculatively when given a drafter).

    input_ids: a list of token-id lists (ragged lengths allowed) or an int array [B, L].
    temperature 0 is greedy; top_k 0 and top_p 1 disable those filters. With a drafter, `policy`
    shapes the draft tree (default: the drafter's `default_policy()`); output is distributed
    exactly as plain decoding's.
    max_cache_len: an upper bound on the target cache slots per sequence. The request needs
    longest prompt + max_new_tokens + the policy's tree nodes; a request needing more is a
    ValueError (the cache actually allocated is that need, bucketed, never more than necessary).
    allow_beyond_max_position: generate past the model's max_position_embeddings (otherwise a
    ValueError: RoPE models are usually unreliable there).
    kv_cache: None keeps the cache in the model's dtype; "int8-hierarchical" (or a
    `specdec.quant_cache.QuantKV`) stores it as INT4/INT8 planes, the model then IS the model
    with that cache (QuantSpec; `drafters.QuantSpec()` drafts from its upper plane).
    steps_per_sync: decode steps run between two checks of whether every sequence is done. On a
    GPU each check makes the host wait for the device; k > 1 checks once per k steps, at the cost
    of up to k - 1 idle steps (which emit nothing) after the last sequence finishes.
    """
    prepared = prepare(
        model,
        input_ids,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        eos_token_id=eos_token_id,
        drafter=drafter,
        policy=policy,
        max_cache_len=max_cache_len,
        allow_beyond_max_position=allow_beyond_max_position,
        kv_cache=kv_cache,
        steps_per_sync=steps_per_sync,
    )
    pad_token_id = inputs.pad_token_id(pad_token_id)
    args, policy, shape = prepared.args, prepared.policy, prepared.shape
    leaves, treedef = jax.tree.flatten(args)
    settings = trace_settings()
    key = (treedef, tuple((x.shape, x.dtype) for x in leaves), policy, shape, settings)
    mesh = model.mesh
    if mesh is not None:  # a compiled loop serves one placement of its arguments
        key = (*key, tuple(getattr(x, "sharding", None) for x in leaves))

    def compile_loop():
        # On a mesh, tracing sees it (jax.set_mesh) so kernels can run per shard.
        with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
            return _JITTED.lower(*args, policy=policy, shape=shape, settings=settings).compile()

    compiled, compile_seconds = _LOOPS.get(key, compile_loop)
    start = time.perf_counter()
    out = compiled(*args)
    # Only the small outputs come back to the host; the caches stay on device and are freed.
    out = jax.device_get(dataclasses.replace(out, cache=None, drafter_state=None))
    wall = time.perf_counter() - start
    return _finish(
        out, prepared.prompt_lens, max_new_tokens, pad_token_id, wall, compile_seconds, shape
    )


def _device_memory() -> int | None:
    """Bytes of memory of the default device (host RAM for the CPU backend), if known."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    stats = device.memory_stats() or {}
    return stats.get("bytes_limit")


def _finish(
    out, prompt_lens, max_new_tokens, pad_token_id, wall, compile_seconds, shape
) -> GenerateOutput:
    lengths = np.asarray(out.num_generated, np.int32)
    tokens = np.full((len(prompt_lens), max_new_tokens), pad_token_id, np.int32)
    for b, start in enumerate(prompt_lens):
        tokens[b, : lengths[b]] = out.history[b, start : start + lengths[b]]
    emit = np.asarray(out.emit_hist).sum(axis=0)  # [T]: steps emitting n + 1 tokens
    accept = np.asarray(out.accept_hist).sum(axis=0)  # [T]: verdicts accepting n drafts
    forwards = int(np.asarray(out.forwards).sum())
    emitted = int(sum((n + 1) * c for n, c in enumerate(emit)))
    reached = [int(accept[d:].sum()) for d in range(shape.tree_depth + 1)]  # accepting >= d
    by_depth = tuple(
        reached[d] / reached[d - 1] if reached[d - 1] else 0.0
        for d in range(1, shape.tree_depth + 1)
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
        accepted_length_histogram=tuple(int(c) for c in emit[: shape.tree_depth + 1]),
    )
    return GenerateOutput(tokens=tokens, lengths=lengths, stats=stats)
