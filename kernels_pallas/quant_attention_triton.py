"""Attention over the hierarchical INT4/INT8 KV cache as a Triton `pallas_call` (GPU; CPU tests in
interpret mode). Contract: `quant_attention_reference` (kernels_pallas/quant_reference.py).

One program owns a (block_m, H) tile of folded query rows (the query heads of one KV head times some
block tokens, as in tree_common) for one (batch, KV head). It walks two key ranges with one online
softmax:

1. the quantised planes, blocks [0, the end of the last group any row may read quantised): each
   block's packed bytes are unpacked into the two head halves (byte j holds channels j and
   j + H/2) and multiplied as matrices of their integer nibbles, never dequantised per element:
   a key block shares one scale and minimum per channel, so the scale multiplies the queries
   and the minimum adds q . min to the scores; a value shares them per token, so the scale
   multiplies the softmax weights and the minimum adds p . min. Levels are u [+ (l - 7.5) / 16],
   the constant part folded into the minimum; the INT8 view multiplies 16 u + l as one 8-bit
   operand. Nibbles become exact float operands four bytes per PTX instruction on the GPU
   (kernels_pallas/nibble_ptx.py), by element-wise bit tricks in interpret mode. The per-row
   rule `(j // group + 1) * group + recent <= p` and j < lengths mask it. The INT4 (draft) view
   never loads the lower planes.
2. the full-precision buffer (positions base + [0, F)), holding the recent committed tokens that
   the rule leaves in full precision and the block's own region (tree mask from the bit-packed
   words, exactly as the tree-attention kernel reads it).

Layout limits (else `fits` is False and the dispatcher uses the reference): value groups cover the
whole head (group >= H), H / 2 >= 16 and group a multiple of 16 (key blocks never straddle a key
group, so one scale row serves a block). With few (batch, KV head) programs the blocks of both
ranges are spread over key splits, merged by log-sum-exp as in the tree-attention kernel.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from kernels_pallas import nibble_ptx
from kernels_pallas import tree_common as tc
from kernels_pallas.quant_reference import (
    LOWER_OFFSET,
    QuantLayerView,
    quant_attention_reference,
    query_positions,
)

BLOCK_K_CHOICES = (64, 32, 16)
# Streaming multiprocessors assumed when the device does not say (an H100 has 132).
DEFAULT_NUM_CORES = 132


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiling of the Triton quantised-KV attention kernel."""

    block_m: int
    """Folded query rows per program (a power of two >= 16)."""
    block_k: int
    """Key slots per block (a power of two >= 16 dividing the key group, so one scale row)."""
    num_splits: int = 1
    """Key splits per (batch, KV head, row tile); > 1 merges partial results by log-sum-exp."""
    num_warps: int = 4
    """Warps per program."""
    fused_planes: bool = True
    """INT8 view: each channel's two nibbles as one 8-bit level operand (f16, exact), so one dot
    per head half instead of two; the INT4 view ignores it. On: 1.22x (B = 1) and 1.25x (B = 8)
    faster than two nibble dots at S = 32k, T = 1 with the default splits (H200, bench_quantspec
    tuning phase, experiments/results/quantspec_h200_run4)."""
    num_stages: int = 3
    """Software-pipelining depth of the key loops (3 was the fastest of {2, 3} at every shape
    of the H200 sweep in experiments/results/quantspec_h200_run2: 7-15% over 2)."""
    ptx_unpack: bool = True
    """Nibbles to float operands four bytes per PTX instruction (kernels_pallas/nibble_ptx.py)
    instead of element by element; 16-bit dtypes on the GPU only (interpret mode cannot run PTX
    and uses the element-wise bit operations, the same values). H200, S = 32k, T = 1, B = 8:
    INT8 0.388 -> 0.286 ms, INT4 0.305 -> 0.246 ms (experiments/results/quantspec_h200_run6)."""


def fits(q: jax.Array, view: QuantLayerView) -> bool:
    """Whether this kernel serves the shapes (else use the reference)."""
    head_dim = q.shape[-1]
    return (
        view.value_group == head_dim
        and head_dim % 32 == 0
        and view.group % BLOCK_K_CHOICES[-1] == 0
        and view.k_buf.shape[1] % view.group == 0
    )


def default_block_sizes(
    rows: int,
    group: int,
    programs: int,
    num_slots: int,
    *,
    num_cores: int = DEFAULT_NUM_CORES,
    upper_only: bool = False,
) -> BlockSizes:
    """Rows padded to a power of two (at most 64); the largest key block dividing the group; key
    splits so that the grid fills the GPU in one wave (see tree_common.choose_num_splits) of two
    programs per multiprocessor, three for the INT4 view's 16-row tiles (half the planes in
    shared memory; H200, S = 32k, T = 1, B = 8: 6 splits 0.214 ms against 4 splits 0.245)."""
    block_m = min(max(16, pl.next_power_of_2(rows)), 64)
    block_k = next(b for b in BLOCK_K_CHOICES if group % b == 0)
    tiles = programs * pl.cdiv(rows, block_m)
    per_core = 3 if upper_only and block_m == 16 else 2
    splits = tc.choose_num_splits(tiles, num_slots, block_k, num_cores=per_core * num_cores)
    return BlockSizes(block_m=block_m, block_k=block_k, num_splits=splits)


def _quant_attention_kernel(
    # inputs
    lengths_ref,  # [B] int32 committed lengths
    base_ref,  # [B] int32 position of buffer slot 0
    qpos_ref,  # [block_m] int32 sequence position of each folded row (-1: padding)
    q_ref,  # [block_m, H]
    *refs,  # k_hi, [k_lo], k_scale, k_min, v_hi, [v_lo], v_scale, v_min, k_buf, v_buf, words,
    #         then the output [block_m, H] and, when split, the log2-sum-exp [block_m]
    num_kv_heads: int,
    num_splits: int,
    width: int,
    group: int,
    recent: int,
    block_k: int,
    upper_only: bool,
    fused_planes: bool,
    ptx_unpack: bool,
    scale_log2: float,
    precision,
):
    refs = list(refs)
    k_hi_ref = refs.pop(0)  # [S, H/2] uint8
    k_lo_ref = None if upper_only else refs.pop(0)  # [S, H/2] uint8
    k_scale_ref, k_min_ref = refs.pop(0), refs.pop(0)  # [S/group, H]
    v_hi_ref = refs.pop(0)  # [S, H/2] uint8
    v_lo_ref = None if upper_only else refs.pop(0)
    v_scale_ref, v_min_ref = refs.pop(0), refs.pop(0)  # [S] (one value group per head)
    k_buf_ref, v_buf_ref = refs.pop(0), refs.pop(0)  # [F, H]
    words_ref, o_ref, *lse_refs = refs  # [W, block_m] int32, [block_m, H], ([block_m])

    split, batch = pl.program_id(1), pl.program_id(2) // num_kv_heads
    length, base = lengths_ref[batch], base_ref[batch]
    block_m, head_dim = q_ref.shape
    half = head_dim // 2
    slots_f = k_buf_ref.shape[0]
    q_a = q_ref[:, pl.ds(0, half)]  # [block_m, H/2] channels [0, H/2)
    q_b = q_ref[:, pl.ds(half, half)]  # channels [H/2, H)
    qpos = qpos_ref[...]  # [block_m]
    dot = functools.partial(pltriton.dot, precision=precision)
    num_words = words_ref.shape[0]

    dt, f32 = q_ref.dtype, jnp.float32
    lower_shift = LOWER_OFFSET - 0.5  # a stored lower nibble n means (n - lower_shift) / 16

    def softmax_step(carry, s, visible, values):
        """One key block: s [block_m, block_k] scores (log2 units), values(p) -> the block's
        p @ V as two halves [block_m, H/2] for weights p [block_m, block_k] (f32)."""
        acc_a, acc_b, m_prev, l_prev = carry
        s = jnp.where(visible, s, -jnp.inf)
        m_new = jnp.maximum(m_prev, s.max(axis=1))  # finite: m starts at EMPTY_LSE
        p = jnp.exp2(s - m_new[:, None])
        alpha = jnp.exp2(m_prev - m_new)
        l_new = alpha * l_prev + p.sum(axis=1)
        pv_a, pv_b = values(p)
        acc_a = acc_a * alpha[:, None] + pv_a
        acc_b = acc_b * alpha[:, None] + pv_b
        return acc_a, acc_b, m_new, l_new

    def reads_quantized(pos):  # [block_k] positions -> [block_m, block_k] bool (the rule)
        return ((pos // group + 1) * group + recent)[None, :] <= qpos[:, None]

    # The planes are multiplied as matrices of their integer nibbles, never dequantised element
    # by element: keys share a scale and minimum per channel over a block (its key group), so
    # q . k = (q * scale) . levels + q . minimum; values share them per token, so
    # p @ v = (p * scale) @ levels + p . minimum. Levels are u + (l - lower_shift) / 16 (u, l:
    # the upper and lower nibbles; the INT4 view reads u only); the constant - lower_shift / 16
    # goes into the minimum (minimum - scale * lower_shift / 16), so the dots see u + l / 16, or
    # c / 16 with the 8-bit level c = 16 u + l (fused planes). The PTX unpacking gives exact
    # operands; the element-wise one adds an offset to each operand (bit tricks instead of int-
    # to-float conversions) that comes off through the other operand's row sums (f32).

    fused = fused_planes and not upper_only
    byte_dt = jnp.float32 if dt == jnp.float32 else jnp.float16  # 8-bit levels exact in f16
    if ptx_unpack:  # 16-bit dtypes on the GPU: four bytes per instruction, exact operands
        byte_operands = lambda hi, lo: (*nibble_ptx.level_operands(hi, lo), 0.0)
        nibble_operands = lambda packed: (*nibble_ptx.nibble_operands(packed, dt), 0.0)
    else:
        byte_operands = lambda hi, lo: _byte_operands(hi, lo, byte_dt)
        nibble_operands = lambda packed: _nibble_operands(packed, dt)
    row_sum = lambda *xs: sum(x.astype(f32).sum(axis=1) for x in xs)  # as the dots see x

    def key_scores(x_a, x_b, rows):
        """x_a, x_b [block_m, H/2] f32 (query halves times the key scales) -> x . (u + l / 16)
        [block_m, block_k] f32 over the key block `rows`."""
        if fused:  # x . (c / 16) = (x / 16) . c
            c_a, c_b, offset = byte_operands(k_hi_ref[rows, :], k_lo_ref[rows, :])
            x16_a, x16_b = (x_a / 16).astype(byte_dt), (x_b / 16).astype(byte_dt)
            s = dot(x16_a, c_a, trans_b=True) + dot(x16_b, c_b, trans_b=True)
            return s - offset * row_sum(x16_a, x16_b)[:, None] if offset else s
        x_a, x_b = x_a.astype(dt), x_b.astype(dt)
        u_a, u_b, offset = nibble_operands(k_hi_ref[rows, :])
        s = dot(x_a, u_a, trans_b=True) + dot(x_b, u_b, trans_b=True)
        if not upper_only:  # x / 16 is exact (a power of two)
            l_a, l_b, _ = nibble_operands(k_lo_ref[rows, :])
            x16_a, x16_b = (x_a.astype(f32) / 16).astype(dt), (x_b.astype(f32) / 16).astype(dt)
            s = s + dot(x16_a, l_a, trans_b=True) + dot(x16_b, l_b, trans_b=True)
        if offset:  # the same offset on both planes
            s = s - (offset * (1 if upper_only else 17 / 16) * row_sum(x_a, x_b))[:, None]
        return s

    def value_products(x, rows):
        """x [block_m, block_k] f32 (weights times the value scales) -> x @ (u + l / 16) as two
        halves [block_m, H/2] f32 over the value block `rows`."""
        if fused:
            c_a, c_b, offset = byte_operands(v_hi_ref[rows, :], v_lo_ref[rows, :])
            x16 = (x / 16).astype(byte_dt)
            out_a, out_b = dot(x16, c_a), dot(x16, c_b)
            correction = offset * row_sum(x16) if offset else None
        else:
            x = x.astype(dt)
            u_a, u_b, offset = nibble_operands(v_hi_ref[rows, :])
            out_a, out_b = dot(x, u_a), dot(x, u_b)
            if not upper_only:
                l_a, l_b, _ = nibble_operands(v_lo_ref[rows, :])
                x16 = (x.astype(f32) / 16).astype(dt)
                out_a, out_b = out_a + dot(x16, l_a), out_b + dot(x16, l_b)
            correction = offset * (1 if upper_only else 17 / 16) * row_sum(x) if offset else None
        if correction is None:
            return out_a, out_b
        return out_a - correction[:, None], out_b - correction[:, None]

    # the minimum's share of the lower nibbles' bias: a level is u + l / 16 - lower_shift / 16
    bias = 0.0 if upper_only else lower_shift / 16

    def quant_step(kb, carry):
        first = pl.multiple_of(kb * block_k, block_k)
        g = first // group
        rows = pl.ds(first, block_k)
        channel = lambda ref, lo: ref[g, pl.ds(lo, half)].astype(f32)[None, :]  # [1, H/2]
        q_a32, q_b32 = q_a.astype(f32), q_b.astype(f32)
        scale_a, scale_b = channel(k_scale_ref, 0), channel(k_scale_ref, half)
        s = key_scores(q_a32 * scale_a, q_b32 * scale_b, rows)
        min_a = channel(k_min_ref, 0) - bias * scale_a
        min_b = channel(k_min_ref, half) - bias * scale_b
        q_min = (q_a32 * min_a).sum(axis=1) + (q_b32 * min_b).sum(axis=1)  # [block_m]
        s = s + q_min[:, None]
        v_s = v_scale_ref[rows].astype(f32)[None, :]  # [1, block_k]
        v_m = v_min_ref[rows].astype(f32)[None, :] - bias * v_s

        def values(p):
            pv_a, pv_b = value_products(p * v_s, rows)
            p_min = (p * v_m).sum(axis=1)[:, None]  # [block_m, 1]
            return pv_a + p_min, pv_b + p_min

        pos = first + jnp.arange(block_k, dtype=jnp.int32)
        visible = (pos < length)[None, :] & reads_quantized(pos)
        return softmax_step(carry, s * scale_log2, visible, values)

    def buffer_step(kb, carry):
        first = pl.multiple_of(kb * block_k, block_k)
        rows = pl.ds(first, block_k)
        s = dot(q_a, k_buf_ref[rows, pl.ds(0, half)], trans_b=True) + dot(
            q_b, k_buf_ref[rows, pl.ds(half, half)], trans_b=True
        )
        pos = base + first + jnp.arange(block_k, dtype=jnp.int32)  # [block_k]
        prefix = (pos < length)[None, :] & ~reads_quantized(pos)
        rel = jnp.broadcast_to((pos - length)[None, :], s.shape)
        words = [jnp.broadcast_to(words_ref[w, :][:, None], s.shape) for w in range(num_words)]
        visible = prefix | tc.region_bits(words, rel, width)
        v_a, v_b = v_buf_ref[rows, pl.ds(0, half)], v_buf_ref[rows, pl.ds(half, half)]
        values = lambda p: (dot(p.astype(dt), v_a), dot(p.astype(dt), v_b))
        return softmax_step(carry, s * scale_log2, visible, values)

    carry = (
        jnp.zeros((block_m, half), jnp.float32),
        jnp.zeros((block_m, half), jnp.float32),
        jnp.full((block_m,), tc.EMPTY_LSE, jnp.float32),
        jnp.zeros((block_m,), jnp.float32),
    )
    # Quantised keys any row may read end at the last group the highest row reads quantised.
    q_end = jnp.maximum(jnp.max(qpos) - recent, 0) // group * group
    num_q = pl.cdiv(jnp.minimum(length, q_end), block_k)  # plane blocks, then buffer blocks
    num_f = pl.cdiv(jnp.clip(length + width - base, 0, slots_f), block_k)
    start, stop = tc.split_range(num_q + num_f, split, num_splits)
    carry = lax.fori_loop(start, jnp.minimum(stop, num_q), quant_step, carry)
    carry = lax.fori_loop(jnp.maximum(start, num_q) - num_q, stop - num_q, buffer_step, carry)
    acc_a, acc_b, m_i, l_i = carry
    empty = l_i == 0.0  # the row saw no key (in this split)
    denom = jnp.where(empty, 1.0, l_i)[:, None]  # such a row gives zeros
    o_ref[:, pl.ds(0, half)] = (acc_a / denom).astype(o_ref.dtype)
    o_ref[:, pl.ds(half, half)] = (acc_b / denom).astype(o_ref.dtype)
    if lse_refs:
        lse_refs[0][...] = jnp.where(
            empty, tc.EMPTY_LSE, m_i + jnp.log2(jnp.where(empty, 1.0, l_i))
        )


# Nibbles n in [0, 16) as exact matrix operands without an int-to-float conversion, element by
# element (interpret mode; `ptx_unpack=False`): their bits OR'd into the mantissa of a power of
# two (nibble_ptx.MAGIC's exponent byte: bf16 0x4300 | n = 128 + n, f16 1024 + n), the offset
# taken off the product afterwards; float32 converts.
_NIBBLE_MAGIC = {
    dtype: (byte << 8, offset) for dtype, (byte, offset, *_) in nibble_ptx.MAGIC.items()
}


def _byte_operands(hi: jax.Array, lo: jax.Array, dtype) -> tuple[jax.Array, jax.Array, float]:
    """Upper and lower planes [n, H/2] uint8 -> each channel's 8-bit level c = 16 u + l for the
    two head halves (byte j holds channels j and j + H/2), plus an offset, in `dtype`: float16
    as 1024 + c (c ORed into the mantissa, exact), float32 converted (offset 0)."""
    c_a = ((hi & 15) << 4) | (lo & 15)  # channels [0, H/2)
    c_b = (hi & 0xF0) | (lo >> 4)  # channels [H/2, H)
    if jnp.dtype(dtype) == jnp.float32:
        return c_a.astype(dtype), c_b.astype(dtype), 0.0
    bits, offset = _NIBBLE_MAGIC[jnp.dtype(jnp.float16)]  # 1024 + c is exact for c < 1024
    as_float = lambda c: lax.bitcast_convert_type(c.astype(jnp.uint16) | bits, jnp.float16)
    return as_float(c_a), as_float(c_b), offset


def _nibble_operands(packed: jax.Array, dtype) -> tuple[jax.Array, jax.Array, float]:
    """packed [n, H/2] uint8 -> (low nibbles + offset, high nibbles + offset) in `dtype`, and the
    offset (0 for float32)."""
    low, high = packed & 15, packed >> 4
    magic = _NIBBLE_MAGIC.get(jnp.dtype(dtype))
    if magic is None:
        return low.astype(dtype), high.astype(dtype), 0.0
    bits, offset = magic
    as_float = lambda n: lax.bitcast_convert_type(n.astype(jnp.uint16) | bits, dtype)
    return as_float(low), as_float(high), offset


@functools.partial(jax.jit, static_argnames=("scale", "block_sizes", "interpret"))
def quant_attention_triton(
    q: jax.Array,  # [B, T, N, H]
    view: QuantLayerView,
    lengths: jax.Array,  # [B] int32
    region_mask: jax.Array,  # [B, T, R] bool
    *,
    scale: float | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
) -> jax.Array:  # [B, T, N, H] in q.dtype
    """Quantised-KV attention (contract of quant_attention_reference) with the Triton kernel."""
    if not fits(q, view):
        raise ValueError(
            f"the Triton quantised-KV kernel needs value groups covering the head, H % 32 == 0 and "
            f"group % 16 == 0: H={q.shape[-1]}, value_group={view.value_group}, "
            f"group={view.group}"
        )
    batch, block, num_heads, head_dim = q.shape
    num_slots, num_kv = view.k_hi.shape[1], view.k_hi.shape[2]
    slots_f = view.k_buf.shape[1]
    shape = tc.TreeShape(batch, block, num_heads, head_dim, num_slots, num_kv, region_mask.shape[2])
    bs = block_sizes or default_block_sizes(
        shape.rows,
        view.group,
        batch * num_kv,
        num_slots,
        num_cores=_num_cores(),
        upper_only=view.upper_only,
    )
    if view.group % bs.block_k or bs.block_k < 16:
        raise ValueError(f"{bs.block_k=} must be >= 16 and divide group={view.group}")
    scale = head_dim**-0.5 if scale is None else scale
    row_tiles = pl.cdiv(shape.rows, bs.block_m)
    rows_padded = row_tiles * bs.block_m
    q_folded = tc.fold_queries(q, shape, rows_padded)  # [B, K, M_pad, H]
    words = tc.pack_region_mask(region_mask, shape, rows_padded)  # [B, W, M_pad]
    qpos = jnp.repeat(query_positions(lengths, region_mask), shape.group, axis=1)  # [B, M]
    qpos = jnp.pad(qpos, ((0, 0), (0, rows_padded - shape.rows)), constant_values=-1)

    kv = lambda m, p, bk: (bk // num_kv, 0, bk % num_kv, 0)
    plane = pl.BlockSpec((None, num_slots, None, head_dim // 2), kv)
    scales_k = pl.BlockSpec((None, num_slots // view.group, None, head_dim), kv)
    scales_v = pl.BlockSpec((None, num_slots, None, None), kv)
    buf = pl.BlockSpec((None, slots_f, None, head_dim), kv)
    operands = [view.k_hi] + ([] if view.upper_only else [view.k_lo])
    specs = [plane] + ([] if view.upper_only else [plane])
    operands += [view.k_scale, view.k_min, view.v_hi]
    specs += [scales_k, scales_k, plane]
    operands += ([] if view.upper_only else [view.v_lo]) + [view.v_scale, view.v_min]
    specs += ([] if view.upper_only else [plane]) + [scales_v, scales_v]
    operands += [view.k_buf.astype(q.dtype), view.v_buf.astype(q.dtype), words]
    specs += [
        buf,
        buf,
        pl.BlockSpec((None, shape.mask_words, bs.block_m), lambda m, p, bk: (bk // num_kv, 0, m)),
    ]
    in_specs = [
        pl.BlockSpec((batch,), lambda m, p, bk: (0,)),
        pl.BlockSpec((batch,), lambda m, p, bk: (0,)),
        pl.BlockSpec((None, bs.block_m), lambda m, p, bk: (bk // num_kv, m)),
        pl.BlockSpec(
            (None, None, bs.block_m, head_dim), lambda m, p, bk: (bk // num_kv, bk % num_kv, m, 0)
        ),
        *specs,
    ]
    splits = bs.num_splits
    tile = lambda m, p, bk: (bk // num_kv, bk % num_kv, m, 0)
    if splits == 1:
        out_shape = [jax.ShapeDtypeStruct((batch, num_kv, rows_padded, head_dim), q.dtype)]
        out_specs = [pl.BlockSpec((None, None, bs.block_m, head_dim), tile)]
    else:
        parts = (batch, num_kv, splits, rows_padded)
        out_shape = [
            jax.ShapeDtypeStruct((*parts, head_dim), jnp.float32),
            jax.ShapeDtypeStruct(parts, jnp.float32),
        ]
        out_specs = [
            pl.BlockSpec(
                (None, None, None, bs.block_m, head_dim),
                lambda m, p, bk: (bk // num_kv, bk % num_kv, p, m, 0),
            ),
            pl.BlockSpec(
                (None, None, None, bs.block_m), lambda m, p, bk: (bk // num_kv, bk % num_kv, p, m)
            ),
        ]
    kernel = functools.partial(
        _quant_attention_kernel,
        num_kv_heads=num_kv,
        num_splits=splits,
        width=shape.width,
        group=view.group,
        recent=view.recent,
        block_k=bs.block_k,
        upper_only=view.upper_only,
        fused_planes=bs.fused_planes,
        ptx_unpack=bs.ptx_unpack and not interpret and q.dtype != jnp.float32,
        scale_log2=scale * tc.LOG2E,
        precision=lax.Precision.HIGHEST if q.dtype == jnp.float32 else None,
    )
    outs = pl.pallas_call(
        kernel,
        grid=(row_tiles, splits, batch * num_kv),  # row tiles fastest: they share K/V in L2
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=pltriton.CompilerParams(num_warps=bs.num_warps, num_stages=bs.num_stages),
        interpret=interpret,
        name="quant_attention_triton",
    )(lengths.astype(jnp.int32), view.base.astype(jnp.int32), qpos, q_folded, *operands)
    out = outs[0] if splits == 1 else tc.merge_splits(*outs)
    return tc.unfold_output(out, shape, q.dtype)


def _num_cores() -> int:
    try:
        return int(getattr(jax.devices()[0], "core_count", 0)) or DEFAULT_NUM_CORES
    except RuntimeError:
        return DEFAULT_NUM_CORES


# The pure-jnp reference of this kernel.
quant_attention_triton_reference = quant_attention_reference
