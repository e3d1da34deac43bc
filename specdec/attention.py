"""Attention entry points used by the model; they pick the implementation (XLA or Pallas)."""

import functools
import os

import jax
import jax.numpy as jnp

from kernels_pallas.quant_reference import QuantLayerView
from kernels_pallas.reference import tree_attention_reference
from kernels_pallas.tree_common import round_up
from specdec import sharding
from specdec.cache import LayerKV

# "interpret" runs the Pallas (Triton) kernel in interpret mode: the CPU tests' way to put the
# kernel on the model's real code path.
IMPLEMENTATIONS = ("auto", "xla", "pallas", "mosaic_gpu", "triton", "mosaic_tpu", "interpret")

# Cache capacities are rounded up to this many slots so every kernel can tile the key axis
# (the GPU kernels need multiples of 64, the TPU kernel of 128).
SLOT_MULTIPLE = 128


def kernel_slots(num_slots: int) -> int:
    """num_slots rounded up to a multiple of SLOT_MULTIPLE."""
    return round_up(num_slots, SLOT_MULTIPLE)


def attend(
    q: jax.Array,  # [B, T, N, H]
    kv: LayerKV,  # one layer of the cache: k, v [B, S, K, H]
    lengths: jax.Array,  # [B] int32
    region_mask: jax.Array,  # [B, T, R] bool
    *,
    impl: str,
) -> jax.Array:  # [B, T, N, H]
    """Block attention over the committed prefix plus the region (see kernels_pallas.reference).

    Dispatches on the type of `kv`, so a cache type with another layout brings its own kernels.
    """
    if isinstance(kv, QuantLayerView):  # the INT4/INT8 cache (specdec.quant_cache)
        from kernels_pallas.quant_attention import quant_attention

        interpret = impl == "interpret"
        implementation = "pallas" if interpret else impl
        return quant_attention(
            q, kv, lengths, region_mask, implementation=implementation, interpret=interpret
        )
    if not isinstance(kv, LayerKV):
        raise TypeError(f"no attention implementation reads a {type(kv).__name__}")
    k_cache, v_cache = kv.k, kv.v
    if impl == "xla":
        return tree_attention_reference(q, k_cache, v_cache, lengths, region_mask)
    import kernels_pallas

    interpret = impl == "interpret"
    kernel = functools.partial(
        kernels_pallas.tree_attention,
        implementation="pallas" if interpret else impl,
        interpret=interpret,
    )
    mesh = sharding.active_mesh()
    if mesh is not None:  # XLA cannot partition a Pallas call: run it on each device's shard
        return sharding.attend_per_shard(kernel, q, k_cache, v_cache, lengths, region_mask, mesh)
    return kernel(q, k_cache, v_cache, lengths, region_mask)


# Causal self-attention (training, scoring). XLA's version writes the [B, N, T, T] probabilities
# of every layer to memory (and keeps them for the backward pass); cuDNN's fused flash attention
# keeps none. This variable picks: "auto" (cuDNN on a GPU for bf16 / fp16 where a one-time probe
# on the device compiles and runs it forward and backward, else XLA), "xla" or "cudnn".
CAUSAL_ENV = "SPECDEC_CAUSAL_ATTENTION"
CAUSAL_CHOICES = ("auto", "xla", "cudnn")
_CUDNN_PROBES: dict[tuple, bool] = {}  # (dtype, heads, kv heads, head dim) -> the probe passed


def _probe_cudnn(dtype, heads: int, kv_heads: int, head_dim: int, implementation="cudnn") -> bool:
    """Whether cuDNN's causal attention compiles and runs (forward and backward) on this device
    for these head counts; run once, eagerly, even when called while a jit is tracing."""
    try:
        with jax.ensure_compile_time_eval():
            q = jnp.ones((1, 128, heads, head_dim), dtype)
            kv = jnp.ones((1, 128, kv_heads, head_dim), dtype)

            def loss(q, k, v):
                out = jax.nn.dot_product_attention(
                    q, k, v, is_causal=True, implementation=implementation
                )
                return out.astype(jnp.float32).sum()

            jax.block_until_ready(jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, kv, kv))
        return True
    except Exception:  # no cuDNN, an unsupported shape or version: XLA serves it
        return False


def causal_implementation(q: jax.Array, k: jax.Array) -> str:
    """ "xla" or "cudnn": what `causal_attention` runs for these inputs (see CAUSAL_ENV)."""
    choice = os.environ.get(CAUSAL_ENV, "auto")
    if choice not in CAUSAL_CHOICES:
        raise ValueError(f"{CAUSAL_ENV}={choice!r}: expected one of {', '.join(CAUSAL_CHOICES)}")
    if choice != "auto":
        return choice
    if (
        jax.default_backend() != "gpu"
        or q.dtype not in (jnp.bfloat16, jnp.float16)
        or sharding.active_mesh() is not None  # keep the partitioner's plain einsums on a mesh
    ):
        return "xla"
    key = (jnp.dtype(q.dtype), q.shape[2], k.shape[2], q.shape[3])
    if key not in _CUDNN_PROBES:
        _CUDNN_PROBES[key] = _probe_cudnn(*key)
    return "cudnn" if _CUDNN_PROBES[key] else "xla"


def causal_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, T, K, H]
    v: jax.Array,  # [B, T, K, H]
) -> jax.Array:  # [B, T, N, H]
    """Plain causal self-attention (training and scoring), GQA-aware: cuDNN's fused kernel on a
    GPU where it runs, else XLA's (`causal_implementation`)."""
    implementation = causal_implementation(q, k)
    if implementation == "cudnn" and os.environ.get(CAUSAL_ENV, "auto") == "auto":
        try:  # shapes the probe did not cover (a sequence length cuDNN rejects, say)
            return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
        except Exception:  # raised while tracing, before anything ran: XLA computes the same
            implementation = "xla"
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)


def attend_block(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, T, K, H]
    v: jax.Array,  # [B, T, K, H]
    mask: jax.Array,  # [B, T, T] bool
    *,
    impl: str,
    causal: bool = False,
) -> jax.Array:  # [B, T, N, H]
    """Attention within one block that has no cached prefix (prefill, training). `causal`
    declares `mask` the causal one (`Region.causal`): where cuDNN's causal flash attention runs
    (a GPU, bf16 / fp16; `causal_implementation`) it serves the block instead of the tree kernel
    over a T x T region. Elsewhere the masked path stays: XLA's causal attention would write
    [B, N, T, T] scores, which the TPU kernel never does."""
    if causal and causal_implementation(q, k) == "cudnn":
        return causal_attention(q, k, v)
    lengths = jax.numpy.zeros((q.shape[0],), jax.numpy.int32)
    return attend(q, LayerKV(k=k, v=v), lengths, mask, impl=impl)
