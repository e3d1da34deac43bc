"""4-bit weights (QuantSpec's draft): each projection matrix quantised in groups of `group`
consecutive input features per output column, 16 levels between the group's minimum and maximum
(the quantiser of the KV cache's upper plane, specdec.quant_cache).

A `QuantWeight` stands where the model reads a weight (`variable[...]` returns it) and
`projection.project` multiplies by its dequantised value (levels * scale + minimum, in the
compute dtype), which XLA can fuse into the product. Weights: 4 bits + two 16-bit numbers per
group of `group` (0.28x the bf16 bytes at group 128).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

DEFAULT_GROUP = 128  # QuantSpec's weight group (PRIOR_ART.md)
LEVELS = 15  # 4-bit levels 0..15


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantWeight:
    """A weight w [*c, *o] (contracted axes c first, as the model stores them) as 4-bit levels
    [C, O] (C = prod(c), O = prod(o)) with a scale and a minimum per (group of C, column)."""

    levels: jax.Array  # [C, O] uint4
    scale: jax.Array  # [C / group, O] (max - min) / 15, in the weight's dtype
    minimum: jax.Array  # [C / group, O]
    shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))  # w's shape
    group: int = dataclasses.field(metadata=dict(static=True))

    def __getitem__(self, index):
        """`variable[...]` (how the model reads a parameter) returns the weight itself."""
        if index is not Ellipsis:
            raise TypeError(f"a QuantWeight is read whole (w[...]), got index {index!r}")
        return self

    @property
    def dtype(self):
        return self.scale.dtype

    def dequantize(self, dtype) -> jax.Array:
        """w's approximation [*c, *o] in `dtype`: levels * scale + minimum per group."""
        c, o = self.levels.shape
        levels = self.levels.astype(dtype).reshape(c // self.group, self.group, o)
        w = levels * self.scale.astype(dtype)[:, None] + self.minimum.astype(dtype)[:, None]
        return w.reshape(self.shape)


def quantize(w: jax.Array, contracted: int, group: int = DEFAULT_GROUP) -> QuantWeight:
    """w [*c, *o] with its first `contracted` axes contracted by the model -> QuantWeight.

    Raises ValueError when prod(c) is not a multiple of `group`."""
    c = math.prod(w.shape[:contracted])
    o = math.prod(w.shape[contracted:])
    if group < 1 or c % group:
        raise ValueError(
            f"weight {w.shape}: its {c} contracted features are not a multiple of {group=}"
        )
    x = w.reshape(c // group, group, o).astype(jnp.float32)  # [G, group, O]
    lo, hi = x.min(axis=1), x.max(axis=1)  # [G, O]
    scale = (hi - lo) / LEVELS
    safe = jnp.where(scale > 0, scale, 1.0)
    levels = jnp.clip(jnp.round((x - lo[:, None]) / safe[:, None]), 0, LEVELS)
    return QuantWeight(
        levels=levels.reshape(c, o).astype(jnp.uint4),
        scale=scale.astype(w.dtype),
        minimum=lo.astype(w.dtype),
        shape=tuple(w.shape),
        group=group,
    )


# The model's projection weights and how many leading axes each contracts (specdec.model).
PROJECTIONS = {("attn", "qkv"): 1, ("attn", "o"): 2, ("mlp", "gate_up"): 1, ("mlp", "down"): 1}


def _layer_path(i: int, block: str, name: str) -> str:
    """The name `quantize_model` gives layer i's weight `block.name`."""
    return f"layers.{i}.{block}.{name}"


def quantize_model(module, group: int = DEFAULT_GROUP) -> dict[str, QuantWeight]:
    """Every projection weight of a Transformer module (and its LM head when untied), quantised:
    {"layers.<i>.<block>.<name>" or "lm_head": QuantWeight}."""
    weights = {}
    for i, layer in enumerate(module.layers):
        for (block, name), contracted in PROJECTIONS.items():
            w = getattr(getattr(layer, block), name)[...]
            weights[_layer_path(i, block, name)] = quantize(w, contracted, group)
    if hasattr(module, "lm_head"):
        weights["lm_head"] = quantize(module.lm_head[...], 1, group)
    return weights


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """The shape of every weight `quantize_model` quantises for a target of this ModelConfig."""
    d, n, k, h = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    f = config.intermediate_size
    per_layer = {
        ("attn", "qkv"): (d, k, n // k + 2, h),
        ("attn", "o"): (n, h, d),
        ("mlp", "gate_up"): (d, 2, f),
        ("mlp", "down"): (f, d),
    }
    shapes = {
        _layer_path(i, block, name): shape
        for i in range(config.num_layers)
        for (block, name), shape in per_layer.items()
    }
    if not config.tie_word_embeddings:
        shapes["lm_head"] = (d, config.vocab_size)
    return shapes


def check_weights(weights: dict[str, QuantWeight], config) -> None:
    """Raise ValueError unless `weights` are this target's (the same names and shapes)."""
    want = expected_shapes(config)
    got = {path: w.shape for path, w in weights.items()}
    if got != want:
        wrong = sorted(p for p in want.keys() | got.keys() if want.get(p) != got.get(p))
        raise ValueError(
            f"4-bit draft weights do not fit this target: {wrong[0]} is "
            f"{got.get(wrong[0], 'missing')}, the target's is {want.get(wrong[0], 'absent')} "
            f"({len(wrong)} weights differ); quantise the target itself "
            f"(QuantSpec.with_int4_weights(model))"
        )


def with_weights(module, weights: dict):
    """A copy of the module whose named weights are replaced by `weights` ({path: QuantWeight or
    array}); the module itself (whose Variables `nnx.merge` shares with its Net) is untouched."""
    module = nnx.clone(module)  # new Variables, the same arrays
    for path, value in weights.items():
        *parents, name = path.split(".")
        owner = module
        for part in parents:
            owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
        getattr(owner, name).set_value(value)
    return module
