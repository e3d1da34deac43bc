"""What every tree-attention kernel shares: input checks, the folded query layout, the bit-packed
tree mask, the choice of key splits and the log-sum-exp merge of split results.

Letters: B batch, T block (tree) tokens, S cache slots, N query heads, K KV heads, G = N // K query
heads per KV head, H head dim, R region width (the block's own slots), M = T * G folded query rows,
W = ceil(R / 32) mask words per row, P key splits.

Folding. The G query heads that share a KV head are stacked into the rows of one query tile:
row m = t * G + g of the [B, K, M, H] folded queries is token t, head k * G + g. One
(M, H) @ (H, block_k) product then serves all G heads from a single read of each K/V block.

Tree mask. Row m sees region slot r iff bit (r % 32) of words[b, r // 32, m] is set. The words are
built from the [B, T, R] bool mask in a few tiny XLA ops (B * W * M int32, no [T, S] array
anywhere); the kernels derive the prefix part of the mask (slot < lengths[b]) from `lengths`
themselves.

Split-K merge. A split writes its rows' output normalised by its own softmax sum together with the
log2-sum-exp of its scores (scaled by log2(e) like the scores inside the kernels). Rows that saw no
key in a split carry `EMPTY_LSE`; rows that saw no key at all come out as zeros, never NaN.
"""

import dataclasses
import functools
import math
import operator

import jax
import jax.numpy as jnp

LOG2E = math.log2(math.e)
MASK_WORD_BITS = 32
# Log2-sum-exp written for a row that saw no visible key. Finite, so the merge never computes
# inf - inf; exp2(EMPTY_LSE - real_lse) underflows to exactly zero.
EMPTY_LSE = -1e30
SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@dataclasses.dataclass(frozen=True)
class TreeShape:
    """Static sizes of one tree-attention call (see the letters in the module doc)."""

    batch: int  # B
    block: int  # T
    num_heads: int  # N
    head_dim: int  # H
    num_slots: int  # S
    num_kv_heads: int  # K
    width: int  # R

    @property
    def group(self) -> int:  # G
        return self.num_heads // self.num_kv_heads

    @property
    def rows(self) -> int:  # M
        return self.block * self.group

    @property
    def mask_words(self) -> int:  # W
        return -(-self.width // MASK_WORD_BITS)


def check_inputs(q, k, v, lengths, region_mask) -> TreeShape:
    """Validates the tree-attention contract and returns the static sizes (errors name values)."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v must be 4-D [B, T, N, H] / [B, S, K, H]: {q.shape=} {k.shape=} {v.shape=}"
        )
    batch, block, num_heads, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"{k.shape=} must equal {v.shape=}")
    k_batch, num_slots, num_kv_heads, k_head_dim = k.shape
    if k_batch != batch or k_head_dim != head_dim:
        raise ValueError(f"{k.shape=} does not match {q.shape=} in batch or head dim")
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        raise ValueError(f"{num_heads=} must be a multiple of {num_kv_heads=}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype: {q.dtype=} {k.dtype=} {v.dtype=}")
    if jnp.dtype(q.dtype) not in SUPPORTED_DTYPES:
        raise ValueError(
            f"{q.dtype=} not supported; use one of {[str(d) for d in SUPPORTED_DTYPES]}"
        )
    if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be int [B={batch}]: {lengths.shape=} {lengths.dtype=}")
    if region_mask.ndim != 3 or region_mask.shape[:2] != (batch, block):
        raise ValueError(f"region_mask must be [B={batch}, T={block}, R]: {region_mask.shape=}")
    if region_mask.dtype != jnp.bool_:
        raise ValueError(f"region_mask must be bool: {region_mask.dtype=}")
    width = region_mask.shape[2]
    if width < block:
        raise ValueError(f"region width R={width} must be >= block T={block}")
    if width > num_slots:
        raise ValueError(f"region width R={width} must be <= cache slots S={num_slots}")
    return TreeShape(batch, block, num_heads, head_dim, num_slots, num_kv_heads, width)


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def fold_queries(q: jax.Array, shape: TreeShape, rows: int | None = None) -> jax.Array:
    """[B, T, N, H] -> [B, K, rows, H] with row m = t * G + g (a free reshape when T == 1).

    `rows` >= M pads with zero rows (default M: no padding; a kernel whose reads past M are
    zero-filled, like Mosaic GPU's TMA copies, needs none, and such rows only touch their own,
    never-read outputs).
    """
    b, t, kh, g, h = shape.batch, shape.block, shape.num_kv_heads, shape.group, shape.head_dim
    folded = q.reshape(b, t, kh, g, h).transpose(0, 2, 1, 3, 4).reshape(b, kh, t * g, h)
    if rows is not None and rows > t * g:
        folded = jnp.pad(folded, ((0, 0), (0, 0), (0, rows - t * g), (0, 0)))
    return folded


def unfold_output(o: jax.Array, shape: TreeShape, dtype) -> jax.Array:
    """[B, K, >= M, H] -> [B, T, N, H] in `dtype` (inverse of `fold_queries`)."""
    b, t, kh, g, h = shape.batch, shape.block, shape.num_kv_heads, shape.group, shape.head_dim
    o = o[:, :, : t * g].reshape(b, kh, t, g, h).transpose(0, 2, 1, 3, 4)  # [B, T, K, G, H]
    return o.reshape(b, t, kh * g, h).astype(dtype)


def pack_region_mask(region_mask: jax.Array, shape: TreeShape, rows_padded: int) -> jax.Array:
    """[B, T, R] bool -> [B, W, M_pad] int32: bit r % 32 of word r // 32 of row t * G + g.

    Written as one gather + reduce so that XLA emits a single small kernel for it.
    """
    width, words = shape.width, shape.mask_words
    row = jnp.arange(rows_padded)  # [M_pad]
    token = jnp.minimum(row // shape.group, shape.block - 1)
    slot = jnp.arange(words * MASK_WORD_BITS).reshape(words, MASK_WORD_BITS)  # [W, 32]
    bits = region_mask[:, token[None, :, None], jnp.minimum(slot, width - 1)[:, None, :]]
    valid = (slot < width)[:, None, :] & (row < shape.rows)[None, :, None]  # [W, M_pad, 32]
    bits = (bits & valid).astype(jnp.uint32)  # [B, W, M_pad, 32]
    weights = jnp.left_shift(jnp.uint32(1), jnp.arange(MASK_WORD_BITS, dtype=jnp.uint32))
    return jax.lax.bitcast_convert_type((bits * weights).sum(-1, dtype=jnp.uint32), jnp.int32)


def region_bits(words: list, rel: jax.Array, width: int) -> jax.Array:
    """Tree-mask bit of region slot `rel` for each row, inside a kernel.

    words: W int32 arrays already broadcast to rel's shape (word w of each element's row);
    rel: int32 slot offsets from lengths[b] (any values; outside [0, R) gives False).
    """
    in_region = (rel >= 0) & (rel < width)
    rel = jnp.clip(rel, 0, width - 1)
    shift = jnp.bitwise_and(rel, MASK_WORD_BITS - 1)
    index = jnp.right_shift(rel, 5)
    bit = jnp.zeros_like(rel)
    for w, word in enumerate(words):
        bit_w = jnp.bitwise_and(jax.lax.shift_right_logical(word, shift), 1)
        bit = jnp.where(index == w, bit_w, bit)
    return in_region & (bit != 0)


def split_range(num_blocks_visible, split, num_splits):
    """Key blocks [start, stop) of split `split`: `num_blocks_visible` blocks spread evenly."""
    per_split = (num_blocks_visible + num_splits - 1) // num_splits
    start = split * per_split
    stop = jnp.minimum(start + per_split, num_blocks_visible)
    return start, stop


def choose_num_splits(
    programs: int,
    num_slots: int,
    block_k: int,
    *,
    num_cores: int,
    min_blocks_per_split: int = 2,
    max_splits: int = 64,
) -> int:
    """Key splits so that programs * splits fills `num_cores` slots in ONE wave.

    A second, partial wave costs a whole extra split's time (a 1.2-wave grid ran 25% slower than a
    1-wave one on the H100), so the splits never push the grid past `num_cores`.
    """
    if programs >= num_cores:
        return 1
    blocks = max(num_slots // block_k, 1)
    return int(max(1, min(num_cores // programs, blocks // min_blocks_per_split, max_splits)))


def merge_splits(o_parts: jax.Array, lse: jax.Array) -> jax.Array:
    """Merges P partial results by log-sum-exp.

    o_parts: [B, K, P, M, H] (each normalised by its own softmax sum); lse: [B, K, P, >= M]
    float32 log2-sum-exp (rows past M are padding). Returns [B, K, M, H] float32.

    Unrolled over the (static, small) P so that the merge is one elementwise XLA fusion rather than
    a chain of reductions: at small problems each extra kernel costs as much as the attention.
    """
    num_splits, rows = o_parts.shape[2], o_parts.shape[3]
    lse_parts = [lse[:, :, p, :rows] for p in range(num_splits)]  # P x [B, K, M]
    top = functools.reduce(jnp.maximum, lse_parts)
    weights = [jnp.exp2(x - top) for x in lse_parts]  # empty splits get 0, the top one 1
    total = functools.reduce(operator.add, weights)  # >= 1
    out = functools.reduce(
        operator.add,
        [w[..., None] * o_parts[:, :, p].astype(jnp.float32) for p, w in enumerate(weights)],
    )  # [B, K, M, H]
    return out / total[..., None]
