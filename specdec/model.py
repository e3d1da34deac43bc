"""The Llama-family decoder (Llama / Mistral / Qwen2 / Qwen3) as a Flax NNX module.

One definition serves inference (blocks written into a KVCache under a Region mask) and training
(a plain causal forward with no cache). Parameters are stored in einsum-friendly layouts
([D, N, H]-style head axes); the q / k / v projections are one tensor and gate / up another, so
a decode step reads each with one matmul (`Attention.qkv`, `MLP.gate_up`). `specdec.checkpoint`
holds the one table that maps HF tensors onto them. Weights live in `param_dtype`; matmuls run in
`dtype` with float32 accumulation.
"""

import contextlib
import dataclasses
import functools
import itertools
import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from specdec import projection
from specdec.attention import attend, attend_block, causal_attention
from specdec.cache import Cache, Region
from specdec.config import ModelConfig
from specdec.rope import apply_rotary, inverse_frequencies, rotary_tables


def _matmul_precision(dtype) -> jax.lax.Precision:
    # Float32 models are used for exactness tests: ask for true f32 matmuls (no TF32 on GPUs).
    return (
        jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT
    )


def _einsum(spec: str, x, w: jax.Array, dtype) -> jax.Array:
    """x [B, T, ...] (or `projection.NormedRows`: normalised first) times w in `dtype` with float32
    accumulation (`projection.project`: a kernel for decode-sized B x T)."""
    return projection.project(spec, x, w, dtype, _matmul_precision(dtype)).astype(dtype)


@functools.cache
def _normal_drawer(shape: tuple[int, ...], dtype, std: float, sharding=None) -> Callable:
    """jit(key -> normal(shape) * std in `dtype`), placed by `sharding` (None: default device).
    One small program per (shape, dtype, std, sharding): the draw is the same on one device and
    on a mesh (partitionable threefry), and no program ever holds the whole model."""

    def draw(key: jax.Array) -> jax.Array:
        return (jax.random.normal(key, shape, jnp.float32) * std).astype(dtype)

    return jax.jit(draw, out_shardings=sharding)


class Deferred:
    """A random parameter not drawn yet (built under `deferred_init()`)."""

    shape: tuple[int, ...]

    def draw(self, sharding=None) -> jax.Array:
        """The parameter's values, straight into `sharding` (None: the default device)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class DeferredNormal(Deferred):
    """A normal draw: its key and law."""

    key: jax.Array
    shape: tuple[int, ...]
    std: float
    dtype: jnp.dtype

    def draw(self, sharding=None) -> jax.Array:
        return _normal_drawer(self.shape, self.dtype, self.std, sharding)(self.key)


@dataclasses.dataclass(frozen=True)
class DeferredFused(Deferred):
    """Several normal draws joined into one parameter by `join` (a module-level function)."""

    parts: tuple[DeferredNormal, ...]
    join: Callable[..., jax.Array]
    shape: tuple[int, ...]

    def draw(self, sharding=None) -> jax.Array:
        return _joiner(self.join, sharding)(*(p.draw() for p in self.parts))


@functools.cache
def _joiner(join: Callable[..., jax.Array], sharding=None) -> Callable:
    """jit(join) placed by `sharding`: one program per (join, sharding), as `_normal_drawer`."""
    return jax.jit(join, out_shardings=sharding)


_DEFER = threading.local()


@contextlib.contextmanager
def deferred_init():
    """While active, random parameters are created as `Deferred` (keys only, nothing drawn),
    so `specdec.models.Model.random(mesh=...)` can draw each one directly sharded."""
    previous = getattr(_DEFER, "on", False)
    _DEFER.on = True
    try:
        yield
    finally:
        _DEFER.on = previous


def _init(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, dtype) -> nnx.Param:
    lazy = DeferredNormal(rngs.params(), tuple(shape), float(std), jnp.dtype(dtype))
    return nnx.Param(lazy if getattr(_DEFER, "on", False) else lazy.draw())


def _init_fused(rngs, shapes, std: float, dtype, join: Callable[..., jax.Array]) -> nnx.Param:
    """One parameter drawn as the pieces `shapes` (keys taken in order, as separate parameters
    would take them: a seed gives the same model as before the pieces were fused) and joined."""
    parts = tuple(
        DeferredNormal(rngs.params(), tuple(s), float(std), jnp.dtype(dtype)) for s in shapes
    )
    shape = jax.eval_shape(join, *(jax.ShapeDtypeStruct(p.shape, p.dtype) for p in parts)).shape
    lazy = DeferredFused(parts, join, tuple(shape))
    return nnx.Param(lazy if getattr(_DEFER, "on", False) else lazy.draw())


def join_qkv(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """q [D, N, H], k [D, K, H], v [D, K, H] -> qkv [D, K, N/K + 2, H] (`Attention.qkv`)."""
    d, kv_heads, head_dim = k.shape
    grouped = q.reshape(d, kv_heads, -1, head_dim)  # [D, K, G, H]: query head g * G + j
    return jnp.concatenate([grouped, k[:, :, None], v[:, :, None]], axis=2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def split(x: jax.Array, axis: int, sizes: tuple[int, ...]) -> tuple[jax.Array, ...]:
    """x cut along `axis` into consecutive pieces of `sizes` (summing to x.shape[axis]). The
    backward pass concatenates the pieces' cotangents in one kernel (autodiff of slicing pads each
    cotangent to x's shape and adds them: a training step's q/k/v and gate/up gradients). Reverse
    mode only (a custom VJP: jax.jvp / jacfwd through it raise)."""
    if sum(sizes) != x.shape[axis]:
        raise ValueError(f"sizes {sizes} do not sum to axis {axis} of shape {x.shape}")
    starts = itertools.accumulate(sizes, initial=0)
    return tuple(
        jax.lax.slice_in_dim(x, lo, lo + n, axis=axis) for lo, n in zip(starts, sizes, strict=False)
    )


def _split_fwd(x, axis, sizes):
    return split(x, axis, sizes), None


def _split_bwd(axis, sizes, _, grads):
    return (jnp.concatenate(grads, axis=axis),)


split.defvjp(_split_fwd, _split_bwd)


def split_qkv(qkv: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x @ qkv [B, T, K, N/K + 2, H] -> q [B, T, N, H], k [B, T, K, H], v [B, T, K, H]."""
    group = qkv.shape[3] - 2
    q, k, v = split(qkv, 3, (group, 1, 1))  # [B, T, K, G, H], [B, T, K, 1, H] x 2
    q = q.reshape(*qkv.shape[:2], -1, qkv.shape[-1])
    return q, jnp.squeeze(k, 3), jnp.squeeze(v, 3)


def join_gate_up(gate: jax.Array, up: jax.Array) -> jax.Array:
    """gate [D, F], up [D, F] -> gate_up [D, 2, F] (`MLP.gate_up`)."""
    return jnp.stack([gate, up], axis=1)


class RMSNorm(nnx.Module):
    """x / rms(x) * weight, statistics in float32 (as HF computes them)."""

    def __init__(self, dim: int, eps: float, *, param_dtype):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        xf = xf * projection.inv_rms(xf, self.eps)
        return (self.weight[...].astype(jnp.float32) * xf).astype(x.dtype)

    def deferred(self, x: jax.Array) -> projection.NormedRows:
        """x [B, T, D] with this norm still to apply, for the projection that takes it: that
        applies the per-token factor 1 / rms(x) to its float32 product
        (`projection.rms_factors`), so no normalised copy of x is written between the two."""
        return projection.NormedRows(x, self.weight[...], self.eps)


class Attention(nnx.Module):
    """Grouped-query attention with RoPE; optional q/k/v bias (Qwen2) and q/k norm (Qwen3)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, param_dtype):
        d, n, k, h, std = (
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.initializer_range,
        )
        # One projection for q, k and v, grouped by KV head: [:, g, :n/k] are the query heads
        # n/k * g ... that share KV head g, [:, g, n/k] is its key and [:, g, n/k + 1] its value.
        # Tensor parallelism splits the K axis, so every device holds whole groups.
        self.qkv = _init_fused(
            rngs, [(d, n, h), (d, k, h), (d, k, h)], std, param_dtype, join_qkv
        )  # [D, K, N/K + 2, H]
        self.o = _init(rngs, (n, h, d), std, param_dtype)  # [N, H, D]
        if cfg.attention_bias:
            self.q_bias = nnx.Param(jnp.zeros((n, h), param_dtype))
            self.k_bias = nnx.Param(jnp.zeros((k, h), param_dtype))
            self.v_bias = nnx.Param(jnp.zeros((k, h), param_dtype))
        if cfg.qk_norm:
            self.q_norm = RMSNorm(h, cfg.rms_norm_eps, param_dtype=param_dtype)
            self.k_norm = RMSNorm(h, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.cfg = cfg

    def project_qkv(self, x, cos: jax.Array, sin: jax.Array, dtype):
        """x [B, T, D] (or `projection.NormedRows` of it) -> rotated q [B, T, N, H],
        k [B, T, K, H], v [B, T, K, H]."""
        qkv = _einsum("BTD,DKJH->BTKJH", x, self.qkv[...], dtype)
        q, k, v = split_qkv(qkv)
        if self.cfg.attention_bias:
            q = q + self.q_bias[...].astype(dtype)
            k = k + self.k_bias[...].astype(dtype)
            v = v + self.v_bias[...].astype(dtype)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def output(self, attn: jax.Array, dtype) -> jax.Array:
        """attn [B, T, N, H] -> [B, T, D]."""
        return _einsum("BTNH,NHD->BTD", attn, self.o[...], dtype)


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)), gate and up as one matmul."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, param_dtype):
        d, f, std = cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range
        self.gate_up = _init_fused(
            rngs, [(d, f), (d, f)], std, param_dtype, join_gate_up
        )  # [D, 2, F]: gate, up
        self.down = _init(rngs, (f, d), std, param_dtype)  # [F, D]

    def __call__(self, x, dtype) -> jax.Array:
        """x [B, T, D] (or `projection.NormedRows` of it) -> [B, T, D]."""
        gate_up = _einsum("BTD,DCF->BTCF", x, self.gate_up[...], dtype)  # [B, T, 2, F]
        gate, up = (jnp.squeeze(part, 2) for part in split(gate_up, 2, (1, 1)))  # [B, T, F]
        hidden = jax.nn.silu(gate) * up  # [B, T, F]
        return _einsum("BTF,FD->BTD", hidden, self.down[...], dtype)


class DecoderLayer(nnx.Module):
    """Pre-norm residual block: attention then MLP."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, param_dtype):
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.attn = Attention(cfg, rngs=rngs, param_dtype=param_dtype)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = MLP(cfg, rngs=rngs, param_dtype=param_dtype)

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        dtype,
        attention: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
        *,
        defer_norms: bool = True,
    ) -> jax.Array:
        """x [B, T, D] -> [B, T, D]; `attention(q, k, v)` decides what the block attends to.

        defer_norms: each norm's per-token factor scales the next projection's float32 product
        (`RMSNorm.deferred`: no normalised copy of x is written; decoding). Otherwise the norm is
        applied first (training: the projection then emits its `dtype` result from the GEMM, and
        the backward pass keeps that instead of the float32 product)."""
        norm = (lambda n, x: n.deferred(x)) if defer_norms else (lambda n, x: n(x))
        q, k, v = self.attn.project_qkv(norm(self.attn_norm, x), cos, sin, dtype)
        x = x + self.attn.output(attention(q, k, v), dtype)
        return x + self.mlp(norm(self.mlp_norm, x), dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ForwardOutput:
    """What one forward pass returns."""

    hidden: jax.Array  # [B, T, D] after the final norm (feed to `Transformer.logits`)
    cache: Cache | None  # the cache with this block's K/V written (lengths unchanged)
    taps: tuple[jax.Array, ...]  # residual stream [B, T, D] after each requested layer


class Transformer(nnx.Module):
    """Decoder-only transformer. `dtype` is the compute dtype; `attention` picks the kernel."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
        dtype=None,
        attention: str = "xla",
        remat: bool = False,
    ):
        self.config = cfg
        self.dtype = jnp.dtype(dtype or param_dtype)
        self.attention = attention
        self.remat = remat  # recompute each layer in the backward pass (training memory)
        self.embed = _init(
            rngs, (cfg.vocab_size, cfg.hidden_size), cfg.initializer_range, param_dtype
        )  # [V, D]
        self.layers = nnx.List(
            [DecoderLayer(cfg, rngs=rngs, param_dtype=param_dtype) for _ in range(cfg.num_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = _init(
                rngs, (cfg.hidden_size, cfg.vocab_size), cfg.initializer_range, param_dtype
            )  # [D, V]

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        """tokens [B, T] int32 -> input residual stream [B, T, D] in the compute dtype."""
        return self.embed[...][tokens].astype(self.dtype)

    def rotary(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """cos, sin [B, T, H] for RoPE positions [B, T]."""
        return rotary_tables(positions, inverse_frequencies(self.config.rope, self.config.head_dim))

    def run_layers(
        self,
        x: jax.Array,  # [B, T, D] residual stream entering layer `start`
        positions: jax.Array,  # [B, T] int32
        cache: Cache | None = None,
        region: Region | None = None,
        *,
        start: int = 0,
        stop: int | None = None,
        prefix: bool = True,
        taps: tuple[int, ...] = (),
    ) -> tuple[jax.Array, Cache | None, tuple[jax.Array, ...]]:
        """Run layers [start, stop) on a block; returns (residual stream after `stop`, cache, taps).

        Self-drafters use this to run part of the target (its first E layers) with the target's
        own cache; `__call__` is embed -> run_layers(0, L) -> final norm. `taps` lists layer indices
        whose output residual stream is returned (in the order given, all inside [start, stop)).
        """
        stop = len(self.layers) if stop is None else stop
        if not 0 <= start <= stop <= len(self.layers):
            raise ValueError(f"layer range [{start}, {stop}) is outside [0, {len(self.layers)}]")
        if any(not start <= t < stop for t in taps):
            raise ValueError(f"taps {taps} must lie in the layer range [{start}, {stop})")
        batch, block = x.shape[:2]
        if region is None:
            region = Region.causal(batch, block)
        cos, sin = self.rotary(positions)  # [B, T, H] each
        tapped = {}
        for index in range(start, stop):
            layer = self.layers[index]
            with jax.named_scope(f"layer_{index}"):
                if cache is None:  # training / scoring: norms applied before the projections

                    def run(layer, x):
                        return layer(x, cos, sin, self.dtype, causal_attention, defer_norms=False)

                    x = (nnx.remat(run) if self.remat else run)(layer, x)
                else:

                    def attention(q, k, v, index=index):
                        # The block's K/V go into the cache first; then attend over prefix + region
                        # (or, for prefill into an empty cache, over the block alone).
                        nonlocal cache
                        cache = cache.write(
                            index, k, v, region.offsets, contiguous=region.contiguous
                        )
                        if not prefix:
                            return attend_block(
                                q, k, v, region.mask, impl=self.attention, causal=region.is_causal
                            )
                        return attend(
                            q, cache.read(index), cache.lengths, region.mask, impl=self.attention
                        )

                    x = layer(x, cos, sin, self.dtype, attention)
                if index in taps:
                    tapped[index] = x
        return x, cache, tuple(tapped[t] for t in taps)

    def __call__(
        self,
        tokens: jax.Array,  # [B, T] int32
        positions: jax.Array,  # [B, T] int32
        cache: Cache | None = None,
        region: Region | None = None,
        *,
        prefix: bool = True,
        taps: tuple[int, ...] = (),
    ) -> ForwardOutput:
        """Run a block of tokens through every layer.

        With no cache: causal attention within the block (training, scoring). With a cache: the
        block's K/V are written at `region` and each token attends to the committed prefix plus the
        region slots its mask allows; `prefix=False` declares the prefix empty (prefill), so
        attention runs over the block alone instead of the whole cache capacity.
        """
        x, cache, tapped = self.run_layers(
            self.embed_tokens(tokens), positions, cache, region, prefix=prefix, taps=taps
        )
        return ForwardOutput(hidden=self.norm(x), cache=cache, taps=tapped)

    def prefill(
        self,
        prompt: jax.Array,
        prompt_lens: jax.Array,
        cache: Cache,
        taps: tuple[int, ...] = (),
    ) -> ForwardOutput:
        """Run right-padded prompts [B, P] into an empty cache; its lengths become prompt_lens."""
        batch, length = prompt.shape
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        out = self(prompt, positions, cache, Region.causal(batch, length), prefix=False, taps=taps)
        return dataclasses.replace(out, cache=out.cache.with_lengths(prompt_lens))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden [..., D] -> float32 logits [..., V]."""
        tied = self.config.tie_word_embeddings
        w = self.embed[...].T if tied else self.lm_head[...]  # [D, V]
        precision = _matmul_precision(self.dtype)
        if hidden.ndim == 3 and not tied:  # [B, T, D]: a decode step's rows may take the kernel
            return projection.project("BTD,DV->BTV", hidden, w, self.dtype, precision)
        return projection.einsum_f32("...D,DV->...V", hidden, w, self.dtype, precision)
