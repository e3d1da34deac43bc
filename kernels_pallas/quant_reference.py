"""The hierarchical INT4/INT8 KV format (QuantSpec) and pure-jnp attention over it: the reference
every quantised-KV kernel is tested against.

Format, per group of values x (PRIOR_ART.md, QuantSpec): s = (max - min) / 15,
    upper u = round((x - min) / s)                 in [0, 15]
    lower l = floor((x - min - u s) / (s / 16))    in [-8, 7], stored as l + 8
The upper plane alone reads back as min + u s (INT4, |error| <= s / 2); both planes read back as
min + u s + (l + 1/2) s / 16 (about INT8, |error| <= s / 32). The lower nibble is a mid-rise
quantiser of the residual (floor, then the middle of the bin) so the INT8 bound holds with no
clipping. Keys are grouped per channel over `group` consecutive tokens (scales [B, S // group, K,
H]); values per token over `value_group` channels of one head (scales [B, S, K, H // value_group]).
Each plane packs two nibbles per byte in halves: byte j of a head holds channel j in its low bits
and channel j + H / 2 in its high bits, so a kernel unpacks two contiguous halves of the head.

Which precision a query reads (the rule that makes the cache a fixed model, whatever the step
structure): the query at sequence position p reads committed position j from the quantised planes
iff j's group ends `recent` or more positions before p, i.e. (j // group + 1) * group + recent <= p;
every other committed position, and the block's own region, come from the full-precision buffer.
The buffer holds positions [base, base + F) with base = group * floor(max(0, lengths - recent) /
group) (see specdec.quant_cache). A query's position is lengths + (visible region slots) - 1: its
tree depth, read off the region mask.

Letters: B batch, T block tokens, N query heads, K KV heads, H head dim, S cache slots, F buffer
slots, R region width.
"""

import dataclasses

import jax
import jax.numpy as jnp

from kernels_pallas.reference import MASK_VALUE

LEVELS = 15  # s = (max - min) / LEVELS: the upper nibble's 16 levels
LOWER_OFFSET = 8  # the lower nibble l in [-8, 7] is stored as l + 8


# ---- the number format ----


def pack_nibbles(codes: jax.Array) -> jax.Array:
    """codes [..., H] uint8 in [0, 15] -> [..., H // 2] uint8 (channel j low, j + H/2 high)."""
    half = codes.shape[-1] // 2
    return codes[..., :half] | (codes[..., half:] << 4)


def unpack_nibbles(packed: jax.Array) -> jax.Array:
    """[..., H // 2] uint8 -> codes [..., H] uint8 (inverse of pack_nibbles)."""
    return jnp.concatenate([packed & 15, packed >> 4], axis=-1)


def quantize(
    x: jax.Array, axis: int, scale_dtype
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Quantise x over groups along `axis` -> (upper, lower, scale, minimum).

    upper, lower: uint8 codes in [0, 15], shaped like x; scale, minimum: x reduced over `axis`
    (kept as a size-1 axis), in scale_dtype. Codes are computed against the stored (rounded)
    scale and minimum, so the error bounds hold for what is read back.
    """
    xf = x.astype(jnp.float32)
    lo = jnp.min(xf, axis=axis, keepdims=True).astype(scale_dtype)
    hi = jnp.max(xf, axis=axis, keepdims=True)
    # Explicit reciprocals (XLA rewrites divisions so anyway): tests reproduce codes bit for bit.
    s = ((hi - lo.astype(jnp.float32)) * (1.0 / LEVELS)).astype(scale_dtype)
    sf, lof = s.astype(jnp.float32), lo.astype(jnp.float32)
    y = jnp.where(sf > 0, (xf - lof) * (1.0 / jnp.where(sf > 0, sf, 1.0)), 0.0)  # units of s
    upper = jnp.clip(jnp.floor(y + 0.5), 0, LEVELS)
    lower = jnp.clip(jnp.floor((y - upper) * 16), -LOWER_OFFSET, LOWER_OFFSET - 1)
    return (
        upper.astype(jnp.uint8),
        (lower + LOWER_OFFSET).astype(jnp.uint8),
        s,
        lo,
    )


def dequantize(
    upper: jax.Array, lower: jax.Array | None, scale: jax.Array, minimum: jax.Array
) -> jax.Array:
    """float32 values from codes (scale/minimum broadcast against them); lower None -> INT4."""
    sf, lof = scale.astype(jnp.float32), minimum.astype(jnp.float32)
    levels = upper.astype(jnp.float32)
    if lower is not None:
        levels = levels + (lower.astype(jnp.float32) - LOWER_OFFSET + 0.5) / 16
    return lof + sf * levels


# ---- one layer of the cache as attention reads it ----


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantLayerView:
    """What attention reads of one layer of a `specdec.quant_cache.QuantCache`.

    `k_lo`/`v_lo` are None in the draft (INT4) view: only the upper planes are read.
    """

    k_hi: jax.Array  # [B, S, K, H // 2] uint8 upper nibbles
    k_lo: jax.Array | None  # [B, S, K, H // 2] uint8 lower nibbles (+8), None: INT4 view
    k_scale: jax.Array  # [B, S // group, K, H] per channel, per group of tokens
    k_min: jax.Array  # [B, S // group, K, H]
    v_hi: jax.Array  # [B, S, K, H // 2] uint8
    v_lo: jax.Array | None  # [B, S, K, H // 2] uint8, None: INT4 view
    v_scale: jax.Array  # [B, S, K, H // value_group] per token, per group of channels
    v_min: jax.Array  # [B, S, K, H // value_group]
    k_buf: jax.Array  # [B, F, K, H] full precision, positions base + [0, F)
    v_buf: jax.Array  # [B, F, K, H]
    base: jax.Array  # [B] int32: position of buffer slot 0 (a multiple of group)
    group: int = dataclasses.field(metadata=dict(static=True))  # tokens per key group
    recent: int = dataclasses.field(metadata=dict(static=True))  # see the module doc

    @property
    def upper_only(self) -> bool:
        """True for the draft (INT4) view."""
        return self.k_lo is None

    @property
    def value_group(self) -> int:
        return self.k_hi.shape[-1] * 2 // self.v_scale.shape[-1]


def dequantize_keys(view: QuantLayerView) -> jax.Array:
    """[B, S, K, H] float32 keys as the view reads them from the planes."""
    k_scale = jnp.repeat(view.k_scale, view.group, axis=1)  # [B, S, K, H]
    k_min = jnp.repeat(view.k_min, view.group, axis=1)
    lo = None if view.k_lo is None else unpack_nibbles(view.k_lo)
    return dequantize(unpack_nibbles(view.k_hi), lo, k_scale, k_min)


def dequantize_values(view: QuantLayerView) -> jax.Array:
    """[B, S, K, H] float32 values as the view reads them from the planes."""
    vg = view.value_group
    v_scale = jnp.repeat(view.v_scale, vg, axis=-1)  # [B, S, K, H]
    v_min = jnp.repeat(view.v_min, vg, axis=-1)
    lo = None if view.v_lo is None else unpack_nibbles(view.v_lo)
    return dequantize(unpack_nibbles(view.v_hi), lo, v_scale, v_min)


def query_positions(lengths: jax.Array, region_mask: jax.Array) -> jax.Array:
    """[B, T] int32 sequence position of each query: lengths + its visible region slots - 1."""
    return lengths[:, None] + jnp.sum(region_mask, axis=-1, dtype=jnp.int32) - 1


def reads_quantized(
    positions: jax.Array, query_pos: jax.Array, group: int, recent: int
) -> jax.Array:
    """bool, broadcast of positions [..., J] against query_pos [..., 1]: the rule in the doc."""
    return (positions // group + 1) * group + recent <= query_pos


def visibility(
    view: QuantLayerView, lengths: jax.Array, region_mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(quantised [B, T, S], buffer [B, T, F]) bool: which copy of which key each query reads."""
    num_slots, slots = view.k_hi.shape[1], view.k_buf.shape[1]
    width = region_mask.shape[-1]
    qpos = query_positions(lengths, region_mask)[:, :, None]  # [B, T, 1]
    pos = jnp.arange(num_slots)[None, None, :]  # [1, 1, S]
    committed = pos < lengths[:, None, None]
    vis_q = committed & reads_quantized(pos, qpos, view.group, view.recent)  # [B, T, S]
    pos_f = (view.base[:, None] + jnp.arange(slots))[:, None, :]  # [B, 1, F]
    committed_f = pos_f < lengths[:, None, None]
    prefix_f = committed_f & ~reads_quantized(pos_f, qpos, view.group, view.recent)
    rel = pos_f - lengths[:, None, None]  # [B, 1, F] region slot
    in_region = (rel >= 0) & (rel < width)
    region_vis = jnp.take_along_axis(
        region_mask,
        jnp.broadcast_to(jnp.clip(rel, 0, width - 1), (*region_mask.shape[:2], slots)),
        axis=2,
    )  # [B, T, F]
    return vis_q, prefix_f | (in_region & region_vis)


def quant_attention_reference(
    q: jax.Array,  # [B, T, N, H]
    view: QuantLayerView,
    lengths: jax.Array,  # [B] int32
    region_mask: jax.Array,  # [B, T, R] bool
    *,
    scale: float | None = None,
) -> jax.Array:  # [B, T, N, H] in q.dtype
    """Attention of a block of T queries over a quantised cache layer plus its region.

    Each query reads every visible key once: from the planes (INT8, or INT4 in the draft view) or
    from the full-precision buffer, by the rule in the module doc.
    """
    batch, block, num_heads, head_dim = q.shape
    num_kv_heads = view.k_buf.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads=} must be a multiple of {num_kv_heads=}")
    rep = num_heads // num_kv_heads
    scale = head_dim**-0.5 if scale is None else scale
    qg = q.astype(jnp.float32).reshape(batch, block, num_kv_heads, rep, head_dim)  # [B,T,K,G,H]
    k_q, v_q = dequantize_keys(view), dequantize_values(view)  # [B, S, K, H] each
    k_f, v_f = view.k_buf.astype(jnp.float32), view.v_buf.astype(jnp.float32)  # [B, F, K, H]
    vis_q, vis_f = visibility(view, lengths, region_mask)
    visible = jnp.concatenate([vis_q, vis_f], axis=-1)  # [B, T, S + F]
    keys = jnp.concatenate([k_q, k_f], axis=1)  # [B, S + F, K, H]
    values = jnp.concatenate([v_q, v_f], axis=1)
    hp = jax.lax.Precision.HIGHEST
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", qg, keys, precision=hp) * scale  # [B, K, G, T, S+F]
    scores = jnp.where(visible[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, values, precision=hp)
    return out.reshape(batch, block, num_heads, head_dim).astype(q.dtype)
