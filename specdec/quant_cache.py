"""The hierarchical INT4/INT8 KV cache (QuantSpec): a second `Cache` type.

Every committed token is stored once as two 4-bit planes (format and read rule:
kernels_pallas/quant_reference.py). The target reads both planes (about INT8); a self-drafter reads
the upper plane only (`with_view("int4")`), a quarter of the bf16 cache's bytes. The most recent
tokens also live in a full-precision buffer of F slots per sequence, holding positions
[base, base + F), base = group * floor(max(0, lengths - recent) / group):

- A forward block (the draft tree, a plain decoding token) is written into the buffer only; nothing
  is quantised while a step runs.
- `commit` / `advance` / `with_lengths` quantise every group that the new committed length
  completes (committed tokens only, never a speculative one) into the planes, then move the buffer
  window up to the new base, a group at a time.
- A query at position p reads committed position j from the planes iff j's group ends at least
  `recent` positions before p. This depends on positions only, never on how tokens were grouped
  into steps, so plain decoding and speculative decoding in this mode run the SAME model (greedy
  output equal in float32, same distribution at T > 0). It needs `recent` >= the deepest draft
  (a step's queries must never need a group that is not yet committed); generate checks it.
- The prefill block (longer than the buffer) is staged in full precision for the duration of the
  prefill forward (which attends over the block itself), then quantised by `with_lengths`.

Letters: B batch, S slots (positions), F buffer slots, K KV heads, H head dim, L layers.
"""

import dataclasses

import jax
import jax.numpy as jnp

from kernels_pallas.quant_reference import QuantLayerView, pack_nibbles, quantize
from specdec.cache import Cache

#: the values `generate(kv_cache=...)` accepts besides None and a `QuantKV`
KV_CACHE_MODES = ("int8-hierarchical",)
VIEWS = ("int8", "int4")


@dataclasses.dataclass(frozen=True)
class QuantKV:
    """The hierarchical INT8 cache mode (kv_cache="int8-hierarchical" is `QuantKV()`)."""

    group: int = 128  # keys: tokens per group (per channel); values: channels per group (per token)
    recent: int | None = None  # committed tokens whose group ended fewer than `recent` positions
    #                             ago are read in full precision; None: `group` (QuantSpec's
    #                             2 x 128 + 1 slot buffer). Must be >= the deepest draft.

    def __post_init__(self):
        for name in ("group", "recent"):
            value = getattr(self, name)
            if value is None and name == "recent":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"QuantKV {name} must be an integer >= 1, got {value!r}")

    @property
    def recent_tokens(self) -> int:
        return self.group if self.recent is None else self.recent

    def value_group(self, head_dim: int) -> int:
        """Channels per value group: `group`, or the whole head when head_dim < group."""
        return min(self.group, head_dim)

    def check(self, head_dim: int, max_depth: int) -> None:
        """Raise ValueError if this mode cannot serve a model / draft tree of these sizes."""
        if head_dim % 2:
            raise ValueError(f"the INT4/INT8 cache packs channel pairs: head_dim {head_dim} is odd")
        if head_dim % self.value_group(head_dim):
            raise ValueError(
                f"value groups of {self.group} channels do not tile head_dim {head_dim}"
            )
        if max_depth > self.recent_tokens:
            raise ValueError(
                f"the draft tree is {max_depth} deep but the quantised cache reads only the last "
                f"recent={self.recent_tokens} committed tokens in full precision; a step's "
                f"queries would need groups that are not committed yet: use a policy at most "
                f"{self.recent_tokens} deep or QuantKV(recent={max_depth})"
            )

    def buffer_slots(self, region: int) -> int:
        """F: buffer slots for a step writing `region` slots (recent + group - 1 + region, in
        whole groups)."""
        need = self.recent_tokens + self.group - 1 + region
        return -(-need // self.group) * self.group

    def capacity(self, slots: int) -> int:
        """`slots` rounded up to whole groups."""
        return -(-slots // self.group) * self.group

    def scale_dtype(self, dtype):
        """Scales and minima: float32 for float32 models, else float16."""
        return jnp.float32 if jnp.dtype(dtype) == jnp.float32 else jnp.float16

    def bytes_per_token(self, num_kv_heads: int, head_dim: int, dtype, view: str = "int8") -> float:
        """Bytes one token's K and V occupy per layer in the planes (INT8: both, INT4: upper)."""
        planes = 2 if view == "int8" else 1
        scale_bytes = jnp.dtype(self.scale_dtype(dtype)).itemsize
        vg = self.value_group(head_dim)
        per_head = (
            2 * planes * head_dim / 2  # K and V planes, a nibble per channel each
            + 2 * scale_bytes * head_dim / self.group  # key scale + min, shared by `group` tokens
            + 2 * scale_bytes * head_dim / vg  # value scale + min per token
        )
        return num_kv_heads * per_head


def parse_kv_cache(kv_cache) -> QuantKV | None:
    """generate's kv_cache argument -> None (the model-dtype cache) or a QuantKV."""
    if kv_cache is None or isinstance(kv_cache, QuantKV):
        return kv_cache
    if isinstance(kv_cache, str) and kv_cache in KV_CACHE_MODES:
        return QuantKV()
    raise ValueError(
        f"kv_cache={kv_cache!r} is not a cache mode: use None (the model's dtype), one of "
        f"{KV_CACHE_MODES} or a specdec.quant_cache.QuantKV"
    )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantLayer:
    """One layer of a QuantCache (field shapes as in `QuantLayerView`)."""

    k_hi: jax.Array  # [B, S, K, H // 2] uint8
    k_lo: jax.Array  # [B, S, K, H // 2] uint8
    k_scale: jax.Array  # [B, S // group, K, H]
    k_min: jax.Array  # [B, S // group, K, H]
    v_hi: jax.Array  # [B, S, K, H // 2] uint8
    v_lo: jax.Array  # [B, S, K, H // 2] uint8
    v_scale: jax.Array  # [B, S, K, H // value_group]
    v_min: jax.Array  # [B, S, K, H // value_group]
    k_buf: jax.Array  # [B, F, K, H] model dtype (during prefill: [B, P, K, H], the staged block)
    v_buf: jax.Array  # [B, F, K, H]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantCache(Cache):
    """Per-layer INT4/INT8 planes + full-precision buffer, and each sequence's committed length."""

    layers: tuple[QuantLayer, ...]  # L
    lengths: jax.Array  # [B] int32
    mode: QuantKV = dataclasses.field(metadata=dict(static=True))
    slots: int = dataclasses.field(metadata=dict(static=True))  # F: buffer slots per sequence
    view: str = dataclasses.field(default="int8", metadata=dict(static=True))  # what `read` gives

    @staticmethod
    def create(
        mode: QuantKV,
        num_layers: int,
        batch: int,
        capacity: int,
        num_kv_heads: int,
        head_dim: int,
        region: int,
        dtype=jnp.bfloat16,
    ) -> "QuantCache":
        """An empty cache of `capacity` positions (a multiple of mode.group) whose buffer holds a
        step writing up to `region` slots."""
        mode.check(head_dim, 0)
        if capacity % mode.group:
            raise ValueError(f"capacity {capacity} must be a multiple of group {mode.group}")
        sdt = mode.scale_dtype(dtype)
        vg = mode.value_group(head_dim)
        half = (batch, capacity, num_kv_heads, head_dim // 2)
        buf = (batch, mode.buffer_slots(region), num_kv_heads, head_dim)

        def layer() -> QuantLayer:
            return QuantLayer(
                k_hi=jnp.zeros(half, jnp.uint8),
                k_lo=jnp.zeros(half, jnp.uint8),
                k_scale=jnp.zeros((batch, capacity // mode.group, num_kv_heads, head_dim), sdt),
                k_min=jnp.zeros((batch, capacity // mode.group, num_kv_heads, head_dim), sdt),
                v_hi=jnp.zeros(half, jnp.uint8),
                v_lo=jnp.zeros(half, jnp.uint8),
                v_scale=jnp.zeros((batch, capacity, num_kv_heads, head_dim // vg), sdt),
                v_min=jnp.zeros((batch, capacity, num_kv_heads, head_dim // vg), sdt),
                k_buf=jnp.zeros(buf, dtype),
                v_buf=jnp.zeros(buf, dtype),
            )

        return QuantCache(
            layers=tuple(layer() for _ in range(num_layers)),
            lengths=jnp.zeros((batch,), jnp.int32),
            mode=mode,
            slots=buf[1],
        )

    # ---- sizes and positions ----

    @property
    def capacity(self) -> int:
        """S: positions per sequence."""
        return self.layers[0].k_hi.shape[1]

    @property
    def buffer_slots(self) -> int:
        """F: full-precision buffer slots per sequence (a multiple of the group)."""
        return self.slots

    @property
    def group(self) -> int:
        return self.mode.group

    def base(self, lengths: jax.Array | None = None) -> jax.Array:
        """[B] int32 position of buffer slot 0 for committed lengths (default: the cache's)."""
        lengths = self.lengths if lengths is None else lengths
        recent = self.mode.recent_tokens
        return jnp.maximum(lengths - recent, 0) // self.group * self.group

    def with_view(self, view: str) -> "QuantCache":
        """The same cache whose `read` gives the INT8 (target) or INT4 (draft) view."""
        if view not in VIEWS:
            raise ValueError(f"view={view!r} must be one of {VIEWS}")
        return dataclasses.replace(self, view=view)

    # ---- the Cache interface ----

    def write(
        self,
        layer: int,
        k_new: jax.Array,
        v_new: jax.Array,
        offsets: jax.Array,
        *,
        contiguous: bool = False,
    ) -> "QuantCache":
        """Store a block's K/V [B, T, K, H] of one layer at positions lengths + offsets [B, T].

        A block longer than the buffer can only be a prefill (lengths 0): it is staged whole in
        full precision until `with_lengths` quantises it. `contiguous` changes nothing here (the
        full-precision buffer is small).
        """
        lay = self.layers[layer]
        batch, block = offsets.shape
        rows = jnp.arange(batch)[:, None]  # [B, 1]
        slots_f = self.buffer_slots
        if block > slots_f:
            width = -(-block // self.group) * self.group
            shape = (batch, width, *k_new.shape[2:])
            k_buf = (
                jnp.zeros(shape, lay.k_buf.dtype)
                .at[rows, offsets]
                .set(k_new.astype(lay.k_buf.dtype), mode="drop")
            )
            v_buf = (
                jnp.zeros(shape, lay.v_buf.dtype)
                .at[rows, offsets]
                .set(v_new.astype(lay.v_buf.dtype), mode="drop")
            )
        else:
            if lay.k_buf.shape[1] != slots_f:
                raise ValueError("a block was written into a layer still holding a staged prefill")
            pos = self.lengths[:, None] + offsets  # [B, T]
            # Positions past the capacity (padding rows) are dropped, never clamped.
            slots = jnp.where(pos < self.capacity, pos - self.base()[:, None], slots_f)
            k_buf = lay.k_buf.at[rows, slots].set(k_new.astype(lay.k_buf.dtype), mode="drop")
            v_buf = lay.v_buf.at[rows, slots].set(v_new.astype(lay.v_buf.dtype), mode="drop")
        new = dataclasses.replace(lay, k_buf=k_buf, v_buf=v_buf)
        return dataclasses.replace(
            self, layers=(*self.layers[:layer], new, *self.layers[layer + 1 :])
        )

    def read(self, layer: int) -> QuantLayerView:
        """The layer as attention reads it: both planes ("int8") or the upper ones ("int4")."""
        lay = self.layers[layer]
        if lay.k_buf.shape[1] != self.buffer_slots:
            raise ValueError(
                "this layer holds a staged prefill block longer than the full-precision buffer: "
                "a prefill must attend over the block itself (prefix=False)"
            )
        both = self.view == "int8"
        return QuantLayerView(
            k_hi=lay.k_hi,
            k_lo=lay.k_lo if both else None,
            k_scale=lay.k_scale,
            k_min=lay.k_min,
            v_hi=lay.v_hi,
            v_lo=lay.v_lo if both else None,
            v_scale=lay.v_scale,
            v_min=lay.v_min,
            k_buf=lay.k_buf,
            v_buf=lay.v_buf,
            base=self.base(),
            group=self.group,
            recent=self.mode.recent_tokens,
        )

    def commit(self, keep: jax.Array, num_keep: jax.Array) -> "QuantCache":
        """Keep region slots keep[b, :num_keep[b]] (increasing), append them to the prefix, then
        quantise the groups this completes and move the buffer window (see the module doc)."""
        batch, width = keep.shape
        slots_f = self.buffer_slots
        rows = jnp.arange(batch)[:, None]  # [B, 1]
        start = (self.lengths - self.base())[:, None]  # [B, 1] buffer slot of region slot 0
        src = jnp.clip(start + keep, 0, slots_f - 1)  # [B, W]
        idx = jnp.arange(width)[None, :]  # [1, W]
        dst = jnp.where(idx < num_keep[:, None], start + idx, slots_f)  # [B, W], dropped past F

        def move(buf: jax.Array) -> jax.Array:  # [B, F, K, H]; keep[i] >= i: read before write
            return buf.at[rows, dst].set(buf[rows, src], mode="drop")

        layers = tuple(
            dataclasses.replace(lay, k_buf=move(lay.k_buf), v_buf=move(lay.v_buf))
            for lay in self.layers
        )
        new_lengths = self.lengths + num_keep.astype(jnp.int32)
        return self._settle(layers, self.base(), new_lengths)

    def with_lengths(self, lengths: jax.Array) -> "QuantCache":
        """Committed lengths [B] replaced (they may only grow): the new groups are quantised.

        After a prefill the staged block (positions from 0) is quantised and buffered here.
        """
        staged = self.layers[0].k_buf.shape[1] != self.buffer_slots
        src_base = jnp.zeros_like(self.lengths) if staged else self.base()
        return self._settle(self.layers, src_base, lengths.astype(jnp.int32))

    # ---- quantising and moving the buffer ----

    def _settle(
        self, layers: tuple[QuantLayer, ...], src_base: jax.Array, new_lengths: jax.Array
    ) -> "QuantCache":
        """Quantise the groups ending in (lengths, new_lengths] from each layer's k_buf/v_buf
        (holding positions src_base [B] + [0, width)) and rebuild the buffer at base(new)."""
        run = lambda layers: tuple(self._settle_layer(x, src_base, new_lengths) for x in layers)
        if layers[0].k_buf.shape[1] != self.buffer_slots:  # a staged prefill: always settle
            return dataclasses.replace(self, layers=run(layers), lengths=new_lengths)
        # Most decode steps complete no group and keep the window: skip the whole pass then
        # (with recent a multiple of the group, both happen at the same steps).
        group = self.group
        completes = jnp.any(new_lengths // group > self.lengths // group)
        moves = jnp.any(self.base(new_lengths) != src_base)
        settled = jax.lax.cond(completes | moves, run, lambda layers: layers, layers)
        return dataclasses.replace(self, layers=settled, lengths=new_lengths)

    def _settle_layer(
        self, lay: QuantLayer, src_base: jax.Array, new_lengths: jax.Array
    ) -> QuantLayer:
        group, num_slots, slots_f = self.group, self.capacity, self.buffer_slots
        batch, width, num_kv, head_dim = lay.k_buf.shape
        rows = jnp.arange(batch)[:, None]  # [B, 1]
        groups = width // group
        sdt = lay.k_scale.dtype
        vg = head_dim // lay.v_scale.shape[-1]
        # Quantise every group of the source; only the newly completed ones are stored.
        k_grouped = lay.k_buf.reshape(batch, groups, group, num_kv, head_dim)  # [B, W/g, g, K, H]
        k_up, k_low, k_s, k_m = quantize(k_grouped, axis=2, scale_dtype=sdt)
        k_up = pack_nibbles(k_up.reshape(batch, width, num_kv, head_dim))  # [B, W, K, H/2]
        k_low = pack_nibbles(k_low.reshape(batch, width, num_kv, head_dim))
        k_s, k_m = k_s[:, :, 0], k_m[:, :, 0]  # [B, W/g, K, H]
        v_grouped = lay.v_buf.reshape(batch, width, num_kv, head_dim // vg, vg)  # [B,W,K,H/vg,vg]
        v_up, v_low, v_s, v_m = quantize(v_grouped, axis=4, scale_dtype=sdt)
        v_up = pack_nibbles(v_up.reshape(batch, width, num_kv, head_dim))  # [B, W, K, H/2]
        v_low = pack_nibbles(v_low.reshape(batch, width, num_kv, head_dim))
        v_s, v_m = v_s[..., 0], v_m[..., 0]  # [B, W, K, H/vg]

        ends = src_base[:, None] + (jnp.arange(groups)[None, :] + 1) * group  # [B, W/g]
        fresh = (ends > self.lengths[:, None]) & (ends <= new_lengths[:, None])  # [B, W/g]
        group_idx = jnp.where(fresh, (ends - group) // group, num_slots // group)  # dropped
        token_fresh = jnp.repeat(fresh, group, axis=1)  # [B, W]
        pos = jnp.where(token_fresh, src_base[:, None] + jnp.arange(width)[None, :], num_slots)

        def put(plane: jax.Array, at: jax.Array, values: jax.Array) -> jax.Array:
            return plane.at[rows, at].set(values, mode="drop")

        # The new buffer window: position new_base + i from source slot new_base - src_base + i.
        new_base = self.base(new_lengths)
        take = new_base[:, None] - src_base[:, None] + jnp.arange(slots_f)[None, :]  # [B, F]
        inside = (take < width)[:, :, None, None]

        def rebase(buf: jax.Array) -> jax.Array:  # [B, W, K, H] -> [B, F, K, H]
            return jnp.where(inside, buf[rows, jnp.clip(take, 0, width - 1)], 0).astype(buf.dtype)

        return QuantLayer(
            k_hi=put(lay.k_hi, pos, k_up),
            k_lo=put(lay.k_lo, pos, k_low),
            k_scale=put(lay.k_scale, group_idx, k_s),
            k_min=put(lay.k_min, group_idx, k_m),
            v_hi=put(lay.v_hi, pos, v_up),
            v_lo=put(lay.v_lo, pos, v_low),
            v_scale=put(lay.v_scale, pos, v_s),
            v_min=put(lay.v_min, pos, v_m),
            k_buf=rebase(lay.k_buf),
            v_buf=rebase(lay.v_buf),
        )


def make_cache(mode: QuantKV, cfg, batch: int, capacity: int, region: int, dtype) -> QuantCache:
    """QuantCache.create for a model config, the capacity rounded up to whole groups."""
    return QuantCache.create(
        mode,
        cfg.num_layers,
        batch,
        mode.capacity(capacity),
        cfg.num_kv_heads,
        cfg.head_dim,
        region,
        dtype,
    )


def cache_bytes_per_token(
    mode: QuantKV | None, num_layers: int, num_kv_heads: int, head_dim: int, dtype
) -> float:
    """Bytes of target cache per token over all layers (model-dtype cache for mode None)."""
    if mode is None:
        return 2 * num_layers * num_kv_heads * head_dim * jnp.dtype(dtype).itemsize
    return num_layers * mode.bytes_per_token(num_kv_heads, head_dim, dtype)


__all__ = [
    "KV_CACHE_MODES",
    "QuantCache",
    "QuantKV",
    "QuantLayer",
    "cache_bytes_per_token",
    "make_cache",
    "parse_kv_cache",
]


def request_mode(kv_cache, drafter, max_depth: int, head_dim: int, mesh=None) -> QuantKV | None:
    """Validate generate's kv_cache against the rest of the request -> the mode (None: default)."""
    mode = parse_kv_cache(kv_cache)
    if mode is None:
        if getattr(drafter, "needs_quantized_cache", False):
            raise ValueError(
                f"{type(drafter).__name__} drafts from the upper plane of the quantised cache: "
                f"pass kv_cache={KV_CACHE_MODES[0]!r} (or a QuantKV)"
            )
        return None
    if mesh is not None:
        raise ValueError(f"kv_cache={kv_cache!r} is not supported for a model sharded on a mesh")
    mode.check(head_dim, max_depth)
    return mode
