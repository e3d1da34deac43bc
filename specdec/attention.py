"""Attention entry points used by the model; they pick the implementation (XLA or Pallas)."""

import functools

import jax

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


def causal_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, T, K, H]
    v: jax.Array,  # [B, T, K, H]
) -> jax.Array:  # [B, T, N, H]
    """Plain causal self-attention (training and scoring): jax's fused implementation, GQA-aware."""
    return jax.nn.dot_product_attention(q, k, v, is_causal=True)


def attend_block(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, T, K, H]
    v: jax.Array,  # [B, T, K, H]
    mask: jax.Array,  # [B, T, T] bool
    *,
    impl: str,
) -> jax.Array:  # [B, T, N, H]
    """Attention within one block that has no cached prefix (prefill, training)."""
    lengths = jax.numpy.zeros((q.shape[0],), jax.numpy.int32)
    return attend(q, LayerKV(k=k, v=v), lengths, mask, impl=impl)
