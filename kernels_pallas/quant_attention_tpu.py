"""Attention over the hierarchical INT4/INT8 KV cache as a Mosaic TPU `pallas_call`. Contract:
`quant_attention_reference` (kernels_pallas/quant_reference.py).

The grid is (batch, row tile, key block); the key-block axis walks the quantised planes (S / block_k
blocks) and then the full-precision buffer (F / block_k blocks), sequentially ("arbitrary"), with
the online-softmax state of every KV head in VMEM scratch. `lengths` and `base` are
scalar-prefetched into SMEM so that the index maps clamp every block past the last visible one to
it: Pallas skips the DMA of a repeated block, and the body is skipped with pl.when. Planes are read
as [B, S, K * H / 2] (a free reshape), so a block is one lane-dense tile of every KV head's bytes;
each head's bytes are unpacked (channel j low nibble, j + H/2 high), dequantised against its scale
rows and multiplied as the rows of one (rows, H) @ (H, block_k) product (GQA reuse), as in the
tree-attention TPU kernel. A key block never straddles a key group (block_k divides the group), so
the quantisation rule `(j // group + 1) * group + recent <= p` is one scalar per block.

Status: checked in interpret mode on CPU and for lowering with jax.export for TPU; never run on a
TPU (none here).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas import tree_common as tc
from kernels_pallas.quant_reference import (
    LOWER_OFFSET,
    QuantLayerView,
    quant_attention_reference,
    query_positions,
)

ROW_ALIGN = 16  # folded rows are padded to a multiple of this (16-bit sublane tile)
MAX_BLOCK_ROWS = 256
BLOCK_K = 128  # key slots per block: the lane width; the key group must be a multiple of it


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiling of the Mosaic TPU quantised-KV attention kernel."""

    block_m: int
    """Folded query rows per row tile (a multiple of 16)."""
    block_k: int = BLOCK_K
    """Key slots per block (a multiple of 128 dividing the key group)."""


def fits(q: jax.Array, view: QuantLayerView) -> bool:
    """Whether this kernel serves the shapes (else use the reference)."""
    return view.value_group == q.shape[-1] and view.group % BLOCK_K == 0


def _kernel(
    # scalar prefetch
    lengths_ref,  # [B] int32 (SMEM)
    base_ref,  # [B] int32 (SMEM)
    # inputs
    q_ref,  # [K, block_m, H]
    qpos_ref,  # [block_m, 1] int32 position of each folded row
    *refs,  # k_hi, [k_lo], k_scale, k_min, v_hi, [v_lo], v_scale, v_min, k_buf, v_buf, words,
    #         out, then scratch m, l, acc
    num_blocks_q: int,
    width: int,
    group: int,
    recent: int,
    block_k: int,
    upper_only: bool,
    scale: float,
):
    refs = list(refs)
    k_hi_ref = refs.pop(0)  # [block_k, K * H/2] uint8
    k_lo_ref = None if upper_only else refs.pop(0)
    k_scale_ref, k_min_ref = refs.pop(0), refs.pop(0)  # [1, K * H] the block's key group
    v_hi_ref = refs.pop(0)  # [block_k, K * H/2] uint8
    v_lo_ref = None if upper_only else refs.pop(0)
    v_scale_ref, v_min_ref = refs.pop(0), refs.pop(0)  # [block_k, K]
    k_buf_ref, v_buf_ref = refs.pop(0), refs.pop(0)  # [block_k, K * H]
    words_ref, o_ref, m_scratch, l_scratch, acc_scratch = refs

    batch, key_block = pl.program_id(0), pl.program_id(2)
    num_kv_heads, block_m, head_dim = q_ref.shape
    half = head_dim // 2
    length, base = lengths_ref[batch], base_ref[batch]
    qpos = jnp.broadcast_to(qpos_ref[...], (block_m, block_k))  # [block_m, block_k]
    lane = lax.broadcasted_iota(jnp.int32, (block_m, block_k), 1)

    @pl.when(key_block == 0)
    def _init():
        m_scratch[...] = jnp.full(m_scratch.shape, tc.EMPTY_LSE, jnp.float32)
        l_scratch[...] = jnp.zeros(l_scratch.shape, jnp.float32)
        acc_scratch[...] = jnp.zeros(acc_scratch.shape, jnp.float32)

    def accumulate(h, k, v, visible):  # k, v [block_k, H]; visible [block_m, block_k]
        s = lax.dot_general(
            q_ref[h],
            k.astype(q_ref.dtype),
            (((1,), (1,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        s = jnp.where(visible, s * scale, -jnp.inf)
        m_prev = m_scratch[h]  # [block_m, 1]
        m_new = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
        p = jnp.exp(s - m_new)
        alpha = jnp.exp(m_prev - m_new)
        l_scratch[h] = alpha * l_scratch[h] + p.sum(axis=1, keepdims=True)
        pv = lax.dot_general(
            p.astype(q_ref.dtype),
            v.astype(q_ref.dtype),
            (((1,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        acc_scratch[h] = alpha * acc_scratch[h] + pv
        m_scratch[h] = m_new

    def levels(hi, lo):  # [block_k, H/2] uint8 -> [block_k, H] float32 levels
        hi = hi.astype(jnp.int32)
        u = jnp.concatenate([hi & 15, hi >> 4], axis=1).astype(jnp.float32)
        if lo is None:
            return u
        lo = lo.astype(jnp.int32)
        low = jnp.concatenate([lo & 15, lo >> 4], axis=1).astype(jnp.float32)
        return u + (low - (LOWER_OFFSET - 0.5)) / 16

    def quant_block():
        first = key_block * block_k
        group_end = (first // group + 1) * group  # the block lies in one key group
        visible = (lane + first < length) & (group_end + recent <= qpos)
        for h in range(num_kv_heads):
            bytes_ = slice(h * half, (h + 1) * half)
            k_lv = levels(k_hi_ref[:, bytes_], None if upper_only else k_lo_ref[:, bytes_])
            heads = slice(h * head_dim, (h + 1) * head_dim)
            k = k_min_ref[:, heads].astype(jnp.float32) + k_scale_ref[:, heads] * k_lv
            v_lv = levels(v_hi_ref[:, bytes_], None if upper_only else v_lo_ref[:, bytes_])
            v_s = v_scale_ref[:, h : h + 1].astype(jnp.float32)  # [block_k, 1]
            v = v_min_ref[:, h : h + 1].astype(jnp.float32) + v_s * v_lv
            accumulate(h, k, v, visible)

    def buffer_block():
        first = base + (key_block - num_blocks_q) * block_k  # position of the block's slot 0
        group_end = (first // group + 1) * group
        pos = lane + first
        prefix = (pos < length) & ~(group_end + recent <= qpos)
        words = [
            jnp.broadcast_to(words_ref[:, w : w + 1], (block_m, block_k))
            for w in range(words_ref.shape[1])
        ]
        visible = prefix | tc.region_bits(words, pos - length, width)
        for h in range(num_kv_heads):
            heads = slice(h * head_dim, (h + 1) * head_dim)
            accumulate(h, k_buf_ref[:, heads], v_buf_ref[:, heads], visible)

    in_planes = key_block < num_blocks_q
    pl.when(in_planes & (key_block * block_k < length))(quant_block)
    buffer_first = (key_block - num_blocks_q) * block_k
    pl.when(~in_planes & (buffer_first < length + width - base))(buffer_block)

    @pl.when(key_block == pl.num_programs(2) - 1)
    def _finish():
        l_i = l_scratch[...]
        o_ref[...] = (acc_scratch[...] / jnp.where(l_i == 0.0, 1.0, l_i)).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("scale", "block_sizes", "interpret"))
def quant_attention_tpu(
    q: jax.Array,  # [B, T, N, H]
    view: QuantLayerView,
    lengths: jax.Array,  # [B] int32
    region_mask: jax.Array,  # [B, T, R] bool
    *,
    scale: float | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
) -> jax.Array:  # [B, T, N, H] in q.dtype
    """Quantised-KV attention (contract of quant_attention_reference) with the Mosaic TPU kernel."""
    if not fits(q, view):
        raise ValueError(
            f"the TPU quantised-KV kernel needs value groups covering the head and a key group "
            f"that is a multiple of {BLOCK_K}: H={q.shape[-1]}, value_group={view.value_group}, "
            f"group={view.group}"
        )
    batch, block, num_heads, head_dim = q.shape
    num_slots, num_kv = view.k_hi.shape[1], view.k_hi.shape[2]
    slots_f = view.k_buf.shape[1]
    shape = tc.TreeShape(batch, block, num_heads, head_dim, num_slots, num_kv, region_mask.shape[2])
    bs = block_sizes or BlockSizes(block_m=min(tc.round_up(shape.rows, ROW_ALIGN), MAX_BLOCK_ROWS))
    bk = bs.block_k
    if bs.block_m % ROW_ALIGN or view.group % bk or bk % 128:
        raise ValueError(f"{bs=} needs block_m % {ROW_ALIGN} == 0 and 128 | block_k | group")
    scale = head_dim**-0.5 if scale is None else scale
    row_tiles = pl.cdiv(shape.rows, bs.block_m)
    rows_padded = row_tiles * bs.block_m
    num_q, num_f = num_slots // bk, slots_f // bk
    width = shape.width

    q_folded = tc.fold_queries(q, shape, rows_padded)  # [B, K, M_pad, H]
    words = tc.pack_region_mask(region_mask, shape, rows_padded).transpose(0, 2, 1)  # [B, M_pad, W]
    qpos = jnp.repeat(query_positions(lengths, region_mask), shape.group, axis=1)  # [B, M]
    qpos = jnp.pad(qpos, ((0, 0), (0, rows_padded - shape.rows)), constant_values=-1)[..., None]
    flat = lambda x: x.reshape(batch, x.shape[1], -1)  # [B, S, K, X] -> [B, S, K * X], free
    groups = lambda x: x.reshape(batch, x.shape[1], 1, num_kv * head_dim)  # [B, S/g, 1, K * H]

    def last_q(b, lens):  # the last plane block holding a committed slot
        return jnp.maximum(pl.cdiv(lens[b], bk) - 1, 0)

    def plane_index(b, m, j, lens, bases):
        return b, jnp.minimum(j, last_q(b, lens)), 0

    def scale_index(b, m, j, lens, bases):
        return b, jnp.minimum(j, last_q(b, lens)) * bk // view.group, 0, 0

    def buffer_index(b, m, j, lens, bases):
        last = jnp.clip(pl.cdiv(lens[b] + width - bases[b], bk) - 1, 0, num_f - 1)
        return b, jnp.clip(j - num_q, 0, last), 0

    plane = pl.BlockSpec((None, bk, num_kv * head_dim // 2), plane_index)
    k_scales = pl.BlockSpec((None, None, 1, num_kv * head_dim), scale_index)
    v_scales = pl.BlockSpec((None, bk, num_kv), plane_index)
    buf = pl.BlockSpec((None, bk, num_kv * head_dim), buffer_index)
    lo = [] if view.upper_only else [flat(view.k_lo)]
    operands = [flat(view.k_hi), *lo, groups(view.k_scale), groups(view.k_min)]
    specs = [plane] * (1 + len(lo)) + [k_scales, k_scales]
    lo = [] if view.upper_only else [flat(view.v_lo)]
    operands += [flat(view.v_hi), *lo, flat(view.v_scale), flat(view.v_min)]
    specs += [plane] * (1 + len(lo)) + [v_scales, v_scales]
    operands += [flat(view.k_buf), flat(view.v_buf), words]
    specs += [
        buf,
        buf,
        pl.BlockSpec((None, bs.block_m, shape.mask_words), lambda b, m, j, *_: (b, m, 0)),
    ]
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(batch, row_tiles, num_q + num_f),
        in_specs=[
            pl.BlockSpec((None, num_kv, bs.block_m, head_dim), lambda b, m, j, *_: (b, 0, m, 0)),
            pl.BlockSpec((None, bs.block_m, 1), lambda b, m, j, *_: (b, m, 0)),
            *specs,
        ],
        out_specs=pl.BlockSpec(
            (None, num_kv, bs.block_m, head_dim), lambda b, m, j, *_: (b, 0, m, 0)
        ),
        scratch_shapes=[
            pltpu.VMEM((num_kv, bs.block_m, 1), jnp.float32),
            pltpu.VMEM((num_kv, bs.block_m, 1), jnp.float32),
            pltpu.VMEM((num_kv, bs.block_m, head_dim), jnp.float32),
        ],
    )
    kernel = functools.partial(
        _kernel,
        num_blocks_q=num_q,
        width=width,
        group=view.group,
        recent=view.recent,
        block_k=bk,
        upper_only=view.upper_only,
        scale=scale,
    )
    out = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct((batch, num_kv, rows_padded, head_dim), q.dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
        name="quant_attention_tpu",
    )(lengths.astype(jnp.int32), view.base.astype(jnp.int32), q_folded, qpos, *operands)
    return tc.unfold_output(out, shape, q.dtype)


# The pure-jnp reference of this kernel.
quant_attention_tpu_reference = quant_attention_reference
