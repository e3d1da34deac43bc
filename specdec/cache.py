"""The KV cache: fixed capacity, per-sequence lengths, blocks written into a region, paths kept.

`Cache` is the interface the model, attention and the decode loop use; `KVCache` (K/V in the
model's dtype) is the default implementation. Another cache (for example a quantized one) is a
second pytree type with the same methods whose `read` returns a view attention knows how to read.

A forward pass over a block of T tokens writes their K/V into the *region* that starts at each
sequence's current length: token t goes to slot `lengths[b] + offsets[b, t]`, and
`Region.mask[b, t, r]` says whether token t attends to region slot r. Slots below `lengths[b]`
(the committed prefix) are visible to every token. Writing never changes `lengths`; afterwards
the caller either `advance`s (the block was a contiguous run, e.g. prefill or a draft catch-up) or
`commit`s a chosen subset of region slots (the accepted root-to-leaf path of a verified tree),
which is moved down to be contiguous with the prefix.
"""

import abc
import dataclasses
import os

import jax
import jax.numpy as jnp

from kernels_pallas import kv_write
from specdec import sharding

# How KVCache.write stores a block's K/V, read when a step is traced: "xla" (a dynamic-update-
# slice per buffer for one sequence's contiguous run, else a scatter per buffer), "pallas" (one
# kernel writing K and V in place, `kernels_pallas.kv_write`, wherever it tiles the buffers; on
# CPU in interpret mode), "auto" (the kernel on a GPU where XLA would scatter, else XLA). H200,
# 8B shape, plain decoding, two alternating pairs of processes: batch 8 4.374 / 4.373 -> 4.335 /
# 4.351 ms a step with the kernel; batch 1 4.456 / 4.449 -> 4.505 / 4.497 ms against the two
# dynamic-update-slices, which keep batch 1 (experiments/results/perf_h200_run11, call 4).
KV_WRITE_ENV = "SPECDEC_KV_WRITE"
KV_WRITE_CHOICES = ("auto", "xla", "pallas")


def kv_write_choice() -> str:
    """The KV_WRITE_ENV setting, checked."""
    choice = os.environ.get(KV_WRITE_ENV, "auto")
    if choice not in KV_WRITE_CHOICES:
        raise ValueError(
            f"{KV_WRITE_ENV}={choice!r}: expected one of {', '.join(KV_WRITE_CHOICES)}"
        )
    return choice


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Region:
    """Where a block's tokens land in the cache and what they see of each other."""

    offsets: jax.Array  # [B, T] int32: region slot of each token, relative to cache lengths
    mask: jax.Array  # [B, T, R] bool: token t sees region slot r (R >= T)
    is_causal: bool = dataclasses.field(default=False, metadata=dict(static=True))
    """Static: the mask is exactly causal over R == T slots (`Region.causal`), so attention
    within the block alone (a prefill) may use a causal flash kernel instead of the mask. A
    narrowed mask resets it (`masked`)."""
    contiguous: bool = dataclasses.field(default=False, metadata=dict(static=True))
    """Static: offsets are 0 .. T - 1 in every row (`causal`, `tree`; kept by `masked`), so the
    block is written as one run at each sequence's length (`Cache.write(contiguous=True)`)."""

    @property
    def width(self) -> int:
        """R: number of region slots the block may write to and attend over."""
        return self.mask.shape[-1]

    @staticmethod
    def causal(batch: int, block: int) -> "Region":
        """A contiguous causal run of `block` tokens (prefill, catch-up, plain decoding)."""
        offsets = jnp.broadcast_to(jnp.arange(block, dtype=jnp.int32), (batch, block))
        mask = jnp.broadcast_to(jnp.tril(jnp.ones((block, block), bool)), (batch, block, block))
        return Region(offsets=offsets, mask=mask, is_causal=True, contiguous=True)

    def masked(self, keep: jax.Array) -> "Region":
        """This region with mask & keep (broadcast to [B, T, R]): no longer exactly causal."""
        return dataclasses.replace(self, mask=self.mask & keep, is_causal=False)

    @staticmethod
    def tree(ancestor_mask: jax.Array) -> "Region":
        """A whole draft tree as one block: node i at region slot i sees its ancestors, itself."""
        batch, nodes, _ = ancestor_mask.shape
        offsets = jnp.broadcast_to(jnp.arange(nodes, dtype=jnp.int32), (batch, nodes))
        return Region(offsets=offsets, mask=ancestor_mask, contiguous=True)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerKV:
    """What attention reads of one layer of a `KVCache`."""

    k: jax.Array  # [B, S, K, H]
    v: jax.Array  # [B, S, K, H]


class Cache(abc.ABC):
    """The cache protocol: a pytree with per-sequence `lengths` and these pure methods."""

    lengths: jax.Array  # [B] int32: committed tokens per sequence

    @property
    @abc.abstractmethod
    def capacity(self) -> int:
        """S: slots per sequence."""

    @abc.abstractmethod
    def write(
        self,
        layer: int,
        k_new: jax.Array,
        v_new: jax.Array,
        offsets: jax.Array,
        *,
        contiguous: bool = False,
    ) -> "Cache":
        """Store a block's K/V [B, T, K, H] of one layer at slots lengths + offsets [B, T].

        `contiguous` (static) declares offsets == 0 .. T - 1 in every row (`Region.contiguous`)
        with lengths + T <= capacity, which the caller has checked (generate sizes every cache
        for prompt + new tokens + the largest region); an implementation may then write the
        block as one run. Otherwise slots past the capacity (padding rows) are dropped."""

    @abc.abstractmethod
    def read(self, layer: int):
        """What attention reads for `layer` (a pytree attention dispatches on, e.g. LayerKV)."""

    @abc.abstractmethod
    def commit(self, keep: jax.Array, num_keep: jax.Array) -> "Cache":
        """Keep region slots keep[b, :num_keep[b]] (increasing) and append them to the prefix."""

    def advance(self, num_tokens: jax.Array) -> "Cache":
        """Commit the first num_tokens [B] region slots as they are (written contiguously)."""
        return self.with_lengths(self.lengths + num_tokens.astype(jnp.int32))

    def with_lengths(self, lengths: jax.Array) -> "Cache":
        """The same buffers with committed lengths [B] replaced."""
        return dataclasses.replace(self, lengths=lengths.astype(jnp.int32))

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache(Cache):
    """Per-layer K/V buffers of fixed capacity S (model dtype) plus each sequence's length."""

    k: tuple[jax.Array, ...]  # L x [B, S, K, H]
    v: tuple[jax.Array, ...]  # L x [B, S, K, H]
    lengths: jax.Array  # [B] int32: committed tokens per sequence

    @staticmethod
    def create(
        num_layers: int,
        batch: int,
        capacity: int,
        num_kv_heads: int,
        head_dim: int,
        dtype=jnp.bfloat16,
    ) -> "KVCache":
        """An empty cache (all lengths 0)."""
        shape = (batch, capacity, num_kv_heads, head_dim)
        return KVCache(
            k=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
            v=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
            lengths=jnp.zeros((batch,), jnp.int32),
        )

    @property
    def capacity(self) -> int:
        """S: slots per sequence."""
        return self.k[0].shape[1]

    def write(
        self,
        layer: int,
        k_new: jax.Array,
        v_new: jax.Array,
        offsets: jax.Array,
        *,
        contiguous: bool = False,
    ) -> "KVCache":
        """Store a block's K/V [B, T, K, H] of one layer at slots lengths + offsets [B, T]."""
        if self._kernel_writes(layer, contiguous):
            k_layer, v_layer = kv_write.kv_write_triton(
                self.k[layer],
                self.v[layer],
                k_new,
                v_new,
                self.lengths[:, None] + offsets,
                interpret=jax.default_backend() != "gpu",
            )
            return self._with_layer(layer, k_layer, v_layer)
        if contiguous and self.batch_size == 1 and sharding.active_mesh() is None:
            # One sequence, one run: a dynamic-update-slice. The indexed scatter below becomes,
            # at batch 1, an update plus a keep-or-drop select that reads the old slots back
            # (two more kernels per layer and step on a GPU, experiments/profile_step.py).
            start = (0, self.lengths[0], 0, 0)
            put = lambda buf, new: jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), start)
            return self._with_layer(layer, put(self.k[layer], k_new), put(self.v[layer], v_new))
        slots = self.lengths[:, None] + offsets  # [B, T]
        # mode="drop": a slot past capacity is discarded, never clamped onto a live slot
        # (callers check capacity up front, so this only guards padding rows).
        if sharding.active_mesh() is not None:
            # On a mesh, a per-row (vmapped) scatter keeps each device's rows local; the indexed
            # form below would first all-gather the block's K/V over the data axis.
            put = jax.vmap(lambda buf, s, new: buf.at[s].set(new.astype(buf.dtype), mode="drop"))
        else:
            rows = jnp.arange(slots.shape[0])[:, None]  # [B, 1]
            put = lambda buf, s, new: buf.at[rows, s].set(new.astype(buf.dtype), mode="drop")
        k_layer, v_layer = put(self.k[layer], slots, k_new), put(self.v[layer], slots, v_new)
        return self._with_layer(layer, k_layer, v_layer)

    def _kernel_writes(self, layer: int, contiguous: bool) -> bool:
        """Whether `write` uses the one-kernel K/V write (KV_WRITE_ENV), not XLA's updates."""
        choice = kv_write_choice()
        if choice == "xla" or sharding.active_mesh() is not None:
            return False
        if not kv_write.fits(self.k[layer]):
            return False
        if choice == "pallas":
            return True
        one_run = contiguous and self.batch_size == 1  # XLA's dynamic-update-slice: kept
        return jax.default_backend() == "gpu" and not one_run

    def _with_layer(self, layer: int, k_layer: jax.Array, v_layer: jax.Array) -> "KVCache":
        """This cache with layer `layer`'s K and V buffers replaced."""
        return dataclasses.replace(
            self,
            k=(*self.k[:layer], k_layer, *self.k[layer + 1 :]),
            v=(*self.v[:layer], v_layer, *self.v[layer + 1 :]),
        )

    def read(self, layer: int) -> LayerKV:
        return LayerKV(k=self.k[layer], v=self.v[layer])

    def commit(self, keep: jax.Array, num_keep: jax.Array) -> "KVCache":
        """Keep region slots keep[b, :num_keep[b]] (increasing) and append them to the prefix.

        keep: [B, W] int32 region offsets (entries at i >= num_keep[b] are ignored);
        num_keep: [B] int32. Region slot keep[b, i] moves to slot lengths[b] + i; since keep is
        increasing, keep[b, i] >= i, so reading every kept slot before writing is safe.
        """
        batch, width = keep.shape
        rows = jnp.arange(batch)[:, None]  # [B, 1]
        src = self.lengths[:, None] + keep  # [B, W]
        idx = jnp.arange(width)[None, :]  # [1, W]
        # Slots of ignored entries point past the end so the scatter drops them.
        dst = jnp.where(idx < num_keep[:, None], self.lengths[:, None] + idx, self.capacity)

        def move(buf: jax.Array) -> jax.Array:
            kept = buf[rows, jnp.clip(src, 0, self.capacity - 1)]  # [B, W, K, H]
            return buf.at[rows, dst].set(kept, mode="drop")

        return KVCache(
            k=tuple(move(b) for b in self.k),
            v=tuple(move(b) for b in self.v),
            lengths=self.lengths + num_keep.astype(jnp.int32),
        )
