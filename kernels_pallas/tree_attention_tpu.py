"""Tree attention as a Mosaic TPU `pallas_call`.

The grid is (batch, row tile, key block). The key-block axis is sequential ("arbitrary"): the
online softmax state of every KV head lives in VMEM scratch across it. `lengths` is
scalar-prefetched into SMEM so that the K/V index maps clamp every key block past lengths[b] + R to
the last visible one: Pallas skips the DMA of a block whose index does not change, so those blocks
cost neither bandwidth nor compute (the body is skipped with pl.when as well). Blocks wholly inside
the committed prefix take no mask; the last ones take the prefix mask from lengths[b] and the tree
mask from the bit-packed words.

K/V are read as [B, S, K * H] (a free reshape) so that a block is a lane-dense (block_k, K * H)
tile holding every KV head; the kernel loops over the heads and runs each head's G query heads as
the rows of one (rows, H) @ (H, block_k) product (GQA reuse). A TPU core runs the grid
sequentially, so no key split is needed to fill it; batch and row tiles are "parallel" for megacore
parts.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas import tree_common as tc
from kernels_pallas.reference import tree_attention_reference

BLOCK_K_CHOICES = (512, 256, 128)  # key blocks tried in order; the block must divide S
ROW_ALIGN = 16  # sublane tile of 16-bit data: folded rows are padded to a multiple of this
MAX_BLOCK_ROWS = 256


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiling of the Mosaic TPU tree-attention kernel."""

    block_m: int
    """Folded query rows per row tile (a multiple of 16)."""
    block_k: int
    """Cache slots per key block (a multiple of 128 that divides S)."""


def default_block_sizes(shape: tc.TreeShape) -> BlockSizes:
    block_m = min(tc.round_up(shape.rows, ROW_ALIGN), MAX_BLOCK_ROWS)
    block_k = next((bk for bk in BLOCK_K_CHOICES if shape.num_slots % bk == 0), BLOCK_K_CHOICES[-1])
    return BlockSizes(block_m=block_m, block_k=block_k)


def _tree_attention_kernel(
    # scalar prefetch
    lengths_ref,  # [B] int32 (SMEM)
    # inputs
    q_ref,  # [K, block_m, H] folded queries of every KV head
    k_ref,  # [block_k, K * H]
    v_ref,  # [block_k, K * H]
    words_ref,  # [block_m, W] int32 bit-packed tree mask
    # outputs
    o_ref,  # [K, block_m, H]
    # scratch
    m_scratch,  # [K, block_m, 1] float32 running max
    l_scratch,  # [K, block_m, 1] float32 running sum
    acc_scratch,  # [K, block_m, H] float32 running output
    *,
    width: int,
    block_k: int,
    scale: float,
):
    batch, key_block = pl.program_id(0), pl.program_id(2)
    num_kv_heads, block_m, head_dim = q_ref.shape
    length = lengths_ref[batch]
    end = length + width
    first = key_block * block_k

    @pl.when(key_block == 0)
    def _init():
        m_scratch[...] = jnp.full(m_scratch.shape, tc.EMPTY_LSE, jnp.float32)
        l_scratch[...] = jnp.zeros(l_scratch.shape, jnp.float32)
        acc_scratch[...] = jnp.zeros(acc_scratch.shape, jnp.float32)

    def update(masked: bool):
        if masked:
            rel = lax.broadcasted_iota(jnp.int32, (block_m, block_k), 1) + (first - length)
            words = [
                jnp.broadcast_to(words_ref[:, w : w + 1], (block_m, block_k))
                for w in range(words_ref.shape[1])
            ]
            visible = (rel < 0) | tc.region_bits(words, rel, width)  # [block_m, block_k]
            slot_ok = (lax.broadcasted_iota(jnp.int32, (block_k, head_dim), 0) + first) < end
        for h in range(num_kv_heads):
            heads = slice(h * head_dim, (h + 1) * head_dim)
            k = k_ref[:, heads]  # [block_k, H]
            v = v_ref[:, heads]  # [block_k, H]
            s = (
                lax.dot_general(
                    q_ref[h], k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
                )
                * scale
            )  # [block_m, block_k]
            if masked:
                s = jnp.where(visible, s, -jnp.inf)
                # Slots past the region may hold anything: keep them out of the PV product.
                v = jnp.where(slot_ok, v, jnp.zeros_like(v))
            m_prev = m_scratch[h]  # [block_m, 1]
            m_new = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
            p = jnp.exp(s - m_new)  # masked scores give exactly 0
            alpha = jnp.exp(m_prev - m_new)
            l_scratch[h] = alpha * l_scratch[h] + p.sum(axis=1, keepdims=True)
            pv = lax.dot_general(
                p.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32
            )  # [block_m, H]
            acc_scratch[h] = alpha * acc_scratch[h] + pv
            m_scratch[h] = m_new

    in_prefix = first + block_k <= length
    pl.when(in_prefix)(functools.partial(update, False))
    pl.when(jnp.logical_and(~in_prefix, first < end))(functools.partial(update, True))

    @pl.when(key_block == pl.num_programs(2) - 1)
    def _finish():
        l_i = l_scratch[...]
        o_ref[...] = (acc_scratch[...] / jnp.where(l_i == 0.0, 1.0, l_i)).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("scale", "block_sizes", "interpret"))
def tree_attention_tpu(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    lengths: jax.Array,  # [B] int32
    region_mask: jax.Array,  # [B, T, R] bool
    *,
    scale: float | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
) -> jax.Array:  # [B, T, N, H] in q.dtype
    """Tree attention (contract of kernels_pallas.reference) with the Mosaic TPU kernel."""
    shape = tc.check_inputs(q, k, v, lengths, region_mask)
    bs = block_sizes or default_block_sizes(shape)
    if shape.num_slots % bs.block_k:
        raise ValueError(f"cache slots S={shape.num_slots} must be a multiple of {bs.block_k=}")
    if bs.block_m % ROW_ALIGN:
        raise ValueError(f"{bs.block_m=} must be a multiple of {ROW_ALIGN}")
    scale = shape.head_dim**-0.5 if scale is None else scale
    kv_heads, head_dim, block_m, block_k = (
        shape.num_kv_heads,
        shape.head_dim,
        bs.block_m,
        bs.block_k,
    )
    row_tiles = pl.cdiv(shape.rows, block_m)
    rows_padded = row_tiles * block_m
    num_key_blocks = shape.num_slots // block_k
    width = shape.width

    q_folded = tc.fold_queries(q, shape, rows_padded)  # [B, K, M_pad, H]
    words = tc.pack_region_mask(region_mask, shape, rows_padded).transpose(0, 2, 1)  # [B, M_pad, W]
    k_flat = k.reshape(shape.batch, shape.num_slots, kv_heads * head_dim)  # free reshape
    v_flat = v.reshape(shape.batch, shape.num_slots, kv_heads * head_dim)

    def kv_index(b, m, j, lengths_ref):
        # Blocks past the last visible one repeat its index, so Pallas skips their DMA.
        last = jnp.maximum((lengths_ref[b] + width + block_k - 1) // block_k - 1, 0)
        return b, jnp.minimum(j, last), 0

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1,
        grid=(shape.batch, row_tiles, num_key_blocks),
        in_specs=[
            pl.BlockSpec((None, kv_heads, block_m, head_dim), lambda b, m, j, lens: (b, 0, m, 0)),
            pl.BlockSpec((None, block_k, kv_heads * head_dim), kv_index),
            pl.BlockSpec((None, block_k, kv_heads * head_dim), kv_index),
            pl.BlockSpec((None, block_m, shape.mask_words), lambda b, m, j, lens: (b, m, 0)),
        ],
        out_specs=pl.BlockSpec(
            (None, kv_heads, block_m, head_dim), lambda b, m, j, lens: (b, 0, m, 0)
        ),
        scratch_shapes=[
            pltpu.VMEM((kv_heads, block_m, 1), jnp.float32),
            pltpu.VMEM((kv_heads, block_m, 1), jnp.float32),
            pltpu.VMEM((kv_heads, block_m, head_dim), jnp.float32),
        ],
    )
    out = pl.pallas_call(
        functools.partial(_tree_attention_kernel, width=width, block_k=block_k, scale=scale),
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct((shape.batch, kv_heads, rows_padded, head_dim), q.dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
        name="tree_attention_tpu",
    )(lengths.astype(jnp.int32), q_folded, k_flat, v_flat, words)
    return tc.unfold_output(out, shape, q.dtype)


# The pure-jnp reference of this kernel is the package contract itself.
tree_attention_tpu_reference = tree_attention_reference
