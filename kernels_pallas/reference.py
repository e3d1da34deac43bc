"""Pure-jnp tree attention against a KV cache: the reference every kernel is tested against.

Layout (one layer): the cache holds K/V for slots [0, S). For sequence b, slots [0, lengths[b]) are
the committed prefix (visible to every query); the current block's own keys were already written
into the region [lengths[b], lengths[b] + R), and `region_mask[b, t, r]` says whether query t sees
region slot r. Slots at or beyond lengths[b] + R are never visible. This covers prefill (lengths =
0, causal mask), plain decoding (T = R = 1), tree verification (R = T, ancestor mask) and
level-by-level drafting (R = tree capacity, T = nodes of one level).
"""

import jax
import jax.numpy as jnp

# Masked scores use a large finite negative rather than -inf, so a fully masked (padded) query row
# yields a uniform softmax instead of NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def visibility_mask(lengths: jax.Array, region_mask: jax.Array, num_slots: int) -> jax.Array:
    """Bool [B, T, S]: which cache slot each query of the block may attend to."""
    _, _, width = region_mask.shape
    slot = jnp.arange(num_slots)[None, None, :]  # [1, 1, S]
    start = lengths[:, None, None]  # [B, 1, 1]
    in_prefix = slot < start
    rel = slot - start  # [B, 1, S] position inside the region
    in_region = (rel >= 0) & (rel < width)
    region_vis = jnp.take_along_axis(
        region_mask,
        jnp.clip(rel, 0, width - 1).astype(jnp.int32).repeat(region_mask.shape[1], 1),
        axis=2,
    )  # [B, T, S]
    return in_prefix | (in_region & region_vis)


def tree_attention_reference(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    lengths: jax.Array,  # [B] int32
    region_mask: jax.Array,  # [B, T, R] bool
    *,
    scale: float | None = None,
) -> jax.Array:  # [B, T, N, H] in q.dtype
    """Attention of a block of T queries over the cached prefix plus the block's region.

    See the module doc for the layout.
    """
    batch, block, num_heads, head_dim = q.shape
    _, num_slots, num_kv_heads, _ = k.shape
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads=} must be a multiple of {num_kv_heads=}")
    group = num_heads // num_kv_heads
    scale = head_dim**-0.5 if scale is None else scale
    qg = q.reshape(batch, block, num_kv_heads, group, head_dim)  # [B, T, K, G, H]
    scores = (
        jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=jnp.float32) * scale
    )  # [B, K, G, T, S]
    visible = visibility_mask(lengths, region_mask, num_slots)  # [B, T, S]
    scores = jnp.where(visible[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum(
        "BKGTS,BSKH->BTKGH", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return out.reshape(batch, block, num_heads, head_dim).astype(q.dtype)


def causal_attention_reference(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, T, K, H]
    v: jax.Array,  # [B, T, K, H]
    *,
    scale: float | None = None,
) -> jax.Array:  # [B, T, N, H]
    """Plain causal self-attention over a block with no cached prefix (prefill, training)."""
    block = q.shape[1]
    lengths = jnp.zeros((q.shape[0],), jnp.int32)
    causal = jnp.tril(jnp.ones((block, block), bool))[None].repeat(q.shape[0], 0)
    return tree_attention_reference(q, k, v, lengths, causal, scale=scale)
