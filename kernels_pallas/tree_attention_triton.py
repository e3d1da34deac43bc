"""Tree attention as a Triton `pallas_call`: the portable GPU kernel (pre-Hopper GPUs, CPU tests).

One program owns a (block_m, H) tile of folded query rows (the G heads of one KV head times some
tree tokens, see tree_common) for one (batch, KV head) and one key split. It walks that split's key
blocks in two loops: blocks wholly inside the committed prefix need no mask at all; the last
blocks, which hold the end of the prefix and the block's own region, get the prefix mask from
lengths[b] and the tree mask from the bit-packed words. Blocks at or past lengths[b] + R are never
read. With more than one split, each split writes its normalised partial output and log2-sum-exp,
merged in XLA.

The Triton backend of Pallas is deprecated on GPU since jax 0.11 (Mosaic GPU replaces it on
Hopper), but it still runs on every CUDA GPU and, with interpret=True, on CPU.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from kernels_pallas import tree_common as tc
from kernels_pallas.reference import tree_attention_reference

# Key block sizes tried in order; the block must divide S so that no key read leaves the cache.
BLOCK_K_CHOICES = (128, 64, 32, 16)
# Streaming multiprocessors assumed when the device does not say (an H100 has 132).
DEFAULT_NUM_CORES = 132


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiling of the Triton tree-attention kernel."""

    block_m: int
    """Folded query rows per program (a power of two >= 16; rows past T * G are padding)."""
    block_k: int
    """Cache slots per key block (a power of two >= 16 that divides S)."""
    num_splits: int
    """Key splits per (batch, KV head, row tile); > 1 merges partial results by log-sum-exp."""
    num_warps: int = 4
    """Warps per program."""
    num_stages: int = 3
    """Software-pipelining depth of the key loop (3 beat 2 at every size swept on the H100)."""


def default_block_sizes(shape: tc.TreeShape, *, num_cores: int = DEFAULT_NUM_CORES) -> BlockSizes:
    """Rows padded to a power of two (at most 64 a tile); the largest key block dividing S."""
    block_m = min(max(16, pl.next_power_of_2(shape.rows)), 64)
    block_k = next((bk for bk in BLOCK_K_CHOICES if shape.num_slots % bk == 0 and bk <= 64), 16)
    programs = shape.batch * shape.num_kv_heads * pl.cdiv(shape.rows, block_m)
    splits = tc.choose_num_splits(programs, shape.num_slots, block_k, num_cores=2 * num_cores)
    return BlockSizes(block_m=block_m, block_k=block_k, num_splits=splits)


def _tree_attention_kernel(
    # inputs
    lengths_ref,  # [B] int32: committed prefix length of each sequence
    q_ref,  # [block_m, H]: folded query rows of one (batch, KV head)
    k_ref,  # [S, H]: keys of that (batch, KV head)
    v_ref,  # [S, H]: values of that (batch, KV head)
    words_ref,  # [W, block_m] int32: bit-packed tree mask of the rows
    # outputs
    o_ref,  # [block_m, H]: output (q dtype) or, when split, normalised partial output (float32)
    *lse_refs,  # when split: [block_m] float32 log2-sum-exp of the split's scores
    num_kv_heads: int,
    width: int,
    block_k: int,
    num_splits: int,
    scale_log2: float,
    precision,
):
    split = pl.program_id(1)
    batch = pl.program_id(2) // num_kv_heads
    length = lengths_ref[batch]
    num_blocks = pl.cdiv(length + width, block_k)  # blocks holding a visible slot
    start, stop = tc.split_range(num_blocks, split, num_splits)
    full_blocks = length // block_k  # blocks entirely inside the prefix: no mask needed

    q = q_ref[...]  # [block_m, H]
    block_m = q.shape[0]
    num_words = words_ref.shape[0]
    dot = functools.partial(pltriton.dot, precision=precision)

    def step(kb, carry, *, masked: bool):
        acc, m_prev, l_prev = carry  # [block_m, H] f32, [block_m] f32, [block_m] f32
        first = pl.multiple_of(kb * block_k, block_k)
        k = k_ref[pl.ds(first, block_k), :]  # [block_k, H]
        v = v_ref[pl.ds(first, block_k), :]  # [block_k, H]
        s = dot(q, k, trans_b=True) * scale_log2  # [block_m, block_k], log2 units
        if masked:
            rel = (
                first - length + jnp.arange(block_k, dtype=jnp.int32)
            )  # [block_k] slot - lengths[b]
            rel_2d = jnp.broadcast_to(rel[None, :], s.shape)
            words = [jnp.broadcast_to(words_ref[w, :][:, None], s.shape) for w in range(num_words)]
            visible = (rel_2d < 0) | tc.region_bits(words, rel_2d, width)
            s = jnp.where(visible, s, -jnp.inf)
            # Slots past the region hold whatever the cache holds (NaN in interpret-mode padding):
            # zero them so that 0 * NaN never reaches the accumulator.
            v = jnp.where((rel < width)[:, None], v, jnp.zeros_like(v))
        m_new = jnp.maximum(m_prev, s.max(axis=1))  # finite: m starts at EMPTY_LSE
        p = jnp.exp2(s - m_new[:, None])  # masked scores give exactly 0
        alpha = jnp.exp2(m_prev - m_new)
        l_new = alpha * l_prev + p.sum(axis=1)
        acc = acc * alpha[:, None] + dot(p.astype(v.dtype), v)
        return acc, m_new, l_new

    carry = (
        jnp.zeros(o_ref.shape, jnp.float32),
        jnp.full((block_m,), tc.EMPTY_LSE, jnp.float32),
        jnp.zeros((block_m,), jnp.float32),
    )
    carry = lax.fori_loop(
        start, jnp.minimum(stop, full_blocks), functools.partial(step, masked=False), carry
    )
    carry = lax.fori_loop(
        jnp.maximum(start, full_blocks), stop, functools.partial(step, masked=True), carry
    )
    acc, m_i, l_i = carry
    empty = l_i == 0.0  # the row saw no key in this split
    out = acc / jnp.where(empty, 1.0, l_i)[:, None]
    o_ref[...] = out.astype(o_ref.dtype)
    if lse_refs:
        lse_refs[0][...] = jnp.where(
            empty, tc.EMPTY_LSE, m_i + jnp.log2(jnp.where(empty, 1.0, l_i))
        )


@functools.partial(jax.jit, static_argnames=("scale", "block_sizes", "interpret"))
def tree_attention_triton(
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
    """Tree attention (contract of kernels_pallas.reference) with the Triton Pallas kernel."""
    shape = tc.check_inputs(q, k, v, lengths, region_mask)
    bs = block_sizes or default_block_sizes(shape, num_cores=_num_cores())
    if shape.num_slots % bs.block_k:
        raise ValueError(f"cache slots S={shape.num_slots} must be a multiple of {bs.block_k=}")
    if bs.block_m < 16 or bs.block_m & (bs.block_m - 1):
        raise ValueError(f"{bs.block_m=} must be a power of two >= 16")
    scale = shape.head_dim**-0.5 if scale is None else scale
    kv_heads, splits = shape.num_kv_heads, bs.num_splits
    row_tiles = pl.cdiv(shape.rows, bs.block_m)
    rows_padded = row_tiles * bs.block_m

    q_folded = tc.fold_queries(q, shape, rows_padded)  # [B, K, M_pad, H]
    words = tc.pack_region_mask(region_mask, shape, rows_padded)  # [B, W, M_pad]
    split_kv = lambda m, p, bk: (bk // kv_heads, bk % kv_heads)
    in_specs = [
        pl.BlockSpec((shape.batch,), lambda m, p, bk: (0,)),
        pl.BlockSpec(
            (None, None, bs.block_m, shape.head_dim), lambda m, p, bk: (*split_kv(m, p, bk), m, 0)
        ),
        pl.BlockSpec(
            (None, shape.num_slots, None, shape.head_dim),
            lambda m, p, bk: (bk // kv_heads, 0, bk % kv_heads, 0),
        ),
        pl.BlockSpec(
            (None, shape.num_slots, None, shape.head_dim),
            lambda m, p, bk: (bk // kv_heads, 0, bk % kv_heads, 0),
        ),
        pl.BlockSpec((None, shape.mask_words, bs.block_m), lambda m, p, bk: (bk // kv_heads, 0, m)),
    ]
    if splits == 1:
        out_shape = [
            jax.ShapeDtypeStruct((shape.batch, kv_heads, rows_padded, shape.head_dim), q.dtype)
        ]
        out_specs = [
            pl.BlockSpec(
                (None, None, bs.block_m, shape.head_dim),
                lambda m, p, bk: (*split_kv(m, p, bk), m, 0),
            )
        ]
    else:
        parts = (shape.batch, kv_heads, splits, rows_padded)
        out_shape = [
            jax.ShapeDtypeStruct((*parts, shape.head_dim), jnp.float32),
            jax.ShapeDtypeStruct(parts, jnp.float32),
        ]
        out_specs = [
            pl.BlockSpec(
                (None, None, None, bs.block_m, shape.head_dim),
                lambda m, p, bk: (*split_kv(m, p, bk), p, m, 0),
            ),
            pl.BlockSpec(
                (None, None, None, bs.block_m), lambda m, p, bk: (*split_kv(m, p, bk), p, m)
            ),
        ]
    kernel = functools.partial(
        _tree_attention_kernel,
        num_kv_heads=kv_heads,
        width=shape.width,
        block_k=bs.block_k,
        num_splits=splits,
        scale_log2=scale * tc.LOG2E,
        precision=lax.Precision.HIGHEST if q.dtype == jnp.float32 else None,
    )
    outs = pl.pallas_call(
        kernel,
        grid=(row_tiles, splits, shape.batch * kv_heads),  # row tiles fastest: they share K/V in L2
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=pltriton.CompilerParams(num_warps=bs.num_warps, num_stages=bs.num_stages),
        interpret=interpret,
        name="tree_attention_triton",
    )(lengths.astype(jnp.int32), q_folded, k, v, words)
    out = outs[0] if splits == 1 else tc.merge_splits(*outs)
    return tc.unfold_output(out, shape, q.dtype)


def _num_cores() -> int:
    try:
        return int(getattr(jax.devices()[0], "core_count", 0)) or DEFAULT_NUM_CORES
    except RuntimeError:
        return DEFAULT_NUM_CORES


# The pure-jnp reference of this kernel is the package contract itself.
tree_attention_triton_reference = tree_attention_reference
