"""Multi-device: tensor parallelism over a "model" mesh axis, data parallelism over "data".

A `jax.sharding.Mesh` with axes named "data" and "model" (either may have size 1) describes the
devices. Every array gets a tuple of *logical* axis names (batch, vocab, embed, heads, kv_heads,
head_dim, mlp, fused, cache_seq) and ONE rule table, `RULES`, maps those names onto mesh axes; XLA's
partitioner (GSPMD / Shardy) then inserts the collectives. That gives the Megatron layout:

    qkv      [D, K, G+2, H] split by KV head   o     [N, H, D]  split by head  -> all-reduce
    gate_up  [D, 2, F]      split by F         down  [F, D]     split by F     -> all-reduce
    embed    [V, D]       split by vocab       lm_head [D, V]   split by vocab (logits sharded)
    KV cache [B, S, K, H] split by batch (data) and KV head (model)

so each layer costs two all-reduces of the [B, T, D] residual stream over the model axis, and
every device reads only its share of the weights and of the cache. Parameters and caches are
created directly sharded: an abstract description (`jax.eval_shape`) gives each array's shape,
the rules give its `NamedSharding`, and `jax.jit(..., out_shardings=...)` (random init, empty
caches) or `jax.make_array_from_callback` (checkpoint tensors, host slices per device) builds
it in place, never whole on one device. Pallas attention kernels cannot be partitioned by XLA:
`attend_per_shard` runs them under `jax.shard_map`, each device over its own batch rows and KV
heads (GQA groups never straddle devices, since K divides over the model axis).

With no mesh nothing here is used and single-device code paths are unchanged.
"""

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, MODEL = "data", "model"
MESH_AXES = (DATA, MODEL)

# The one rule table: logical axis name -> mesh axis (None: replicated).
RULES: dict[str, str | None] = {
    "batch": DATA,  # B: sequences (decode) and rows (training)
    "vocab": MODEL,  # V: embedding rows, LM-head columns, logits
    "embed": None,  # D: the residual stream stays whole on every device
    "heads": MODEL,  # N: query heads (o, q_bias)
    "kv_heads": MODEL,  # K: key/value heads (qkv's query groups, biases, the KV cache)
    "head_dim": None,  # H
    "mlp": MODEL,  # F: MLP hidden width
    "fused": None,  # which projection of a fused weight (q heads / k / v; gate / up)
    "cache_seq": None,  # S: cache slots
}
# Logical axes that fall back to replication when their size does not divide the mesh axis
# (a vocabulary of 32001 still loads; its LM head is then replicated). All others must divide.
OPTIONAL = frozenset({"vocab"})

# Parameter leaf name -> logical axes, for `specdec.model.Transformer` and the EAGLE head
# (drafters.eagle.HeadLayer reuses the names; its qkv is [W = D or 2D, K, N/K + 2, H]). Names not
# listed (norm weights, EAGLE's fc) are replicated: they are small, and their matmuls produce the
# replicated residual stream.
PARAM_AXES: dict[str, tuple[str, ...]] = {
    "embed": ("vocab", "embed"),  # [V, D]
    "lm_head": ("embed", "vocab"),  # [D, V]
    "o": ("heads", "head_dim", "embed"),  # [N, H, D]
    "q_bias": ("heads", "head_dim"),  # [N, H]
    "k_bias": ("kv_heads", "head_dim"),  # [K, H]
    "v_bias": ("kv_heads", "head_dim"),  # [K, H]
    "qkv": ("embed", "kv_heads", "fused", "head_dim"),  # [D, K, N/K + 2, H]: whole KV groups
    "gate_up": ("embed", "fused", "mlp"),  # [D, 2, F]
    "down": ("mlp", "embed"),  # [F, D]
}

# A KV cache buffer of the `specdec.cache.Cache` layout [B, S, K, ...]; lengths are [B].
CACHE_AXES = ("batch", "cache_seq", "kv_heads")

_MESH_TEXT = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


# ---- meshes --------------------------------------------------------------------------------


def check_mesh(mesh: Any) -> Mesh:
    """`mesh` itself if it is a jax Mesh with axes named exactly ("data", "model"); else errors."""
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh with axes ('data', 'model'), got "
            f"{type(mesh).__name__}"
        )
    if set(mesh.axis_names) != set(MESH_AXES) or len(mesh.axis_names) != 2:
        raise ValueError(
            f"mesh axes are {tuple(mesh.axis_names)}; specdec needs a 2-D mesh with axes named "
            f"{MESH_AXES} (either may have size 1), e.g. specdec.sharding.make_mesh(2, 4)"
        )
    explicit = [
        name
        for name, kind in zip(mesh.axis_names, mesh.axis_types, strict=True)
        if kind != jax.sharding.AxisType.Auto
    ]
    if explicit:
        raise ValueError(
            f"mesh axes {explicit} are not AxisType.Auto; specdec lets XLA place collectives, "
            "so build the mesh with Auto axes (the jax.sharding.Mesh default)"
        )
    return mesh


def make_mesh(data: int, model: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, model) mesh over the first data * model of `devices` (default: all local ones)."""
    for name, size in (("data", data), ("model", model)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"mesh {name} size must be an integer >= 1, got {size!r}")
    devices = list(jax.devices() if devices is None else devices)
    if data * model > len(devices):
        raise ValueError(
            f"a {data}x{model} mesh needs {data * model} devices but only {len(devices)} are "
            f"available ({devices[0].platform}); on CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count=N before jax starts"
        )
    grid = np.array(devices[: data * model], dtype=object).reshape(data, model)
    return Mesh(grid, MESH_AXES)


def parse_mesh(text: str) -> tuple[int, int]:
    """'2x4' -> (data=2, model=4); a ValueError naming the text otherwise."""
    match = _MESH_TEXT.match(str(text))
    if not match:
        raise ValueError(
            f"--mesh must be DATAxMODEL with positive integers (e.g. 1x2), got {text!r}"
        )
    data, model = int(match.group(1)), int(match.group(2))
    if data < 1 or model < 1:
        raise ValueError(f"--mesh sizes must be >= 1, got {text!r}")
    return data, model


def mesh_from_text(text: str | None) -> Mesh | None:
    """`make_mesh(*parse_mesh(text))`, or None for None (the CLIs' --mesh option)."""
    return None if text is None else make_mesh(*parse_mesh(text))


def axis_size(mesh: Mesh, axis: str) -> int:
    """Devices along one named axis of `mesh`."""
    return int(mesh.shape[axis])


# ---- logical axes -> shardings --------------------------------------------------------------


def spec(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh, what: str = "array") -> P:
    """PartitionSpec of an array whose dimensions have these logical names, by `RULES`.

    A dimension whose size does not divide its mesh axis is an error naming `what` (or, for the
    OPTIONAL axes, replicated).
    """
    if len(logical) > len(shape):
        raise ValueError(f"{what}: {len(logical)} logical axes for a shape {tuple(shape)}")
    parts = []
    used = set()
    for name, size in zip(logical, shape, strict=False):
        axis = RULES.get(name) if name is not None else None
        if axis is not None and axis not in used:
            n = axis_size(mesh, axis)
            if size % n:
                if name in OPTIONAL:
                    axis = None
                else:
                    raise ValueError(
                        f"{what}: its {name} dimension ({size}) is not divisible by the mesh's "
                        f"{axis!r} axis ({n} devices)"
                    )
        if axis is not None and axis in used:
            axis = None
        if axis is not None:
            used.add(axis)
        parts.append(axis)
    while parts and parts[-1] is None:
        parts.pop()
    return P(*parts)


def named(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh, what="array"):
    """NamedSharding for an array with these logical axis names (see `spec`)."""
    return NamedSharding(mesh, spec(logical, shape, mesh, what))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full array on every device."""
    return NamedSharding(mesh, P())


def by_batch(mesh: Mesh) -> NamedSharding:
    """Rows (the leading axis) split over "data", the rest replicated."""
    return NamedSharding(mesh, P(RULES["batch"]))


def _leaf_name(path) -> str | None:
    """The last dictionary key / attribute of a pytree path that names a parameter."""
    for entry in reversed(path):
        name = getattr(entry, "key", None)
        if name is None:
            name = getattr(entry, "name", None)
        if isinstance(name, str) and name not in ("value", "raw_value"):
            return name
    return None


def _path_text(path) -> str:
    return jax.tree_util.keystr(path)


def param_named(name: str | None, shape: Sequence[int], mesh: Mesh, what: str) -> NamedSharding:
    """NamedSharding of a parameter called `name` (its leaf name) with this shape."""
    axes = PARAM_AXES.get(name)
    if axes is None or len(axes) != len(shape):
        return replicated(mesh)
    return named(axes, shape, mesh, what)


def param_sharding(path, leaf, mesh: Mesh) -> NamedSharding:
    """NamedSharding of one parameter (or optimizer moment) from its name in `PARAM_AXES`."""
    shape = getattr(leaf, "shape", ())
    return param_named(_leaf_name(path), shape, mesh, f"parameter {_path_text(path)}")


def param_shardings(tree: Any, mesh: Mesh) -> Any:
    """The tree of NamedShardings for a parameter tree (nnx.State, pure dict, TrainState with
    optimizer moments: every leaf is placed by its name)."""
    check_mesh(mesh)
    return jax.tree_util.tree_map_with_path(lambda p, x: param_sharding(p, x, mesh), tree)


def check_config(cfg, mesh: Mesh, what: str = "model") -> None:
    """Errors naming the sizes when a model's heads / KV heads / MLP width do not split."""
    n = axis_size(check_mesh(mesh), MODEL)
    for field, value in (
        ("num_heads", cfg.num_heads),
        ("num_kv_heads", cfg.num_kv_heads),
        ("intermediate_size", cfg.intermediate_size),
    ):
        if value % n:
            raise ValueError(
                f"{what}: {field}={value} is not divisible by the mesh's model axis ({n} "
                f"devices); tensor parallelism splits heads, KV heads and the MLP evenly"
            )


def check_batch(batch: int, mesh: Mesh) -> None:
    """An error naming both sizes when `batch` does not split over the data axis."""
    n = axis_size(mesh, DATA)
    if batch % n:
        raise ValueError(
            f"batch size {batch} is not divisible by the mesh's data axis ({n} devices); "
            f"pad the batch to a multiple of {n} or use a mesh with a smaller data axis"
        )


def state_shardings(tree: Any, mesh: Mesh, batch: int) -> Any:
    """Shardings for decode-time state (caches, drafter states) of batch size `batch`.

    Inside a `specdec.cache.Cache`, buffers of rank >= 3 follow the cache layout [B, S, K, ...]
    (batch over data, KV heads over model); every other array whose leading axis is the batch is
    split by rows; the rest is replicated.
    """
    from specdec.cache import Cache

    def leaf(x, in_cache: bool):
        shape = getattr(x, "shape", ())
        if in_cache and len(shape) >= 3 and shape[0] == batch:
            return named(CACHE_AXES, shape, mesh, f"KV cache buffer {tuple(shape)}")
        if len(shape) >= 1 and shape[0] == batch:
            return named(("batch",), shape, mesh, f"batch array {tuple(shape)}")
        return replicated(mesh)

    def node(x):
        if isinstance(x, Cache):
            return jax.tree.map(lambda y: leaf(y, True), x)
        return leaf(x, False)

    return jax.tree.map(node, tree, is_leaf=lambda x: isinstance(x, Cache))


def create(fn: Callable[[], Any], shardings: Any) -> Any:
    """Run `fn` (a pure function building arrays: zeros, random init) straight into `shardings`:
    each device computes only its own shards."""
    return jax.jit(fn, out_shardings=shardings)()


def create_state(fn: Callable[[], Any], mesh: Mesh, batch: int) -> Any:
    """`fn()` (an empty cache or drafter state for `batch` rows) created directly sharded."""
    abstract = jax.eval_shape(fn)
    return create(fn, state_shardings(abstract, mesh, batch))


def put_batch(array, mesh: Mesh) -> jax.Array:
    """A host array [B, ...] split by rows over the data axis."""
    array = np.asarray(array)
    check_batch(array.shape[0], mesh)
    return jax.device_put(array, by_batch(mesh))


def host_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A host array placed shard by shard: each device receives only its own slice."""
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


# ---- where things live ----------------------------------------------------------------------


def mesh_of(tree: Any) -> Mesh | None:
    """The (data, model) mesh the arrays of `tree` are sharded over, or None (single device)."""
    for x in jax.tree.leaves(tree):
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, NamedSharding) and set(sharding.mesh.axis_names) == set(MESH_AXES):
            return sharding.mesh
    return None


def place(tree: Any, mesh: Mesh) -> Any:
    """`tree` with every array not yet on `mesh` replicated onto it (a drafter built on one
    device becomes a replicated drafter); arrays already on the mesh stay as they are."""

    def move(x):
        if not isinstance(x, jax.Array):
            return x
        if isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh:
            return x
        return jax.device_put(x, replicated(mesh))

    return jax.tree.map(move, tree)


def shard_params(tree: Any, mesh: Mesh) -> Any:
    """A parameter tree (e.g. a `specdec.models.Net`) moved onto `mesh` by the rule table (for
    small modules built on one device, such as an EAGLE head for a target on a mesh)."""
    return jax.device_put(tree, param_shardings(tree, mesh))


def active_mesh() -> jax.sharding.AbstractMesh | None:
    """The (data, model) mesh set by `jax.set_mesh` around tracing, or None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or set(mesh.axis_names) != set(MESH_AXES):
        return None
    return mesh


# ---- kernels per shard ----------------------------------------------------------------------


def attend_per_shard(kernel: Callable, q, k, v, lengths, region_mask, mesh) -> jax.Array:
    """Run an attention kernel (one XLA cannot partition, e.g. a Pallas call) on each device's
    shard: rows over "data", heads over "model". kernel(q, k, v, lengths, region_mask) -> out.

    q [B, T, N, H], k/v [B, S, K, H], lengths [B], region_mask [B, T, R] -> [B, T, N, H].
    """
    heads = P(DATA, None, MODEL, None)
    rows = P(DATA)
    per_shard = jax.shard_map(
        kernel,
        mesh=mesh,
        in_specs=(heads, heads, heads, rows, rows),
        out_specs=heads,
        check_vma=False,
    )
    return per_shard(q, k, v, lengths, region_mask)


__all__ = [
    "DATA",
    "MESH_AXES",
    "MODEL",
    "PARAM_AXES",
    "RULES",
    "attend_per_shard",
    "check_batch",
    "check_config",
    "check_mesh",
    "create",
    "create_state",
    "make_mesh",
    "mesh_from_text",
    "mesh_of",
    "param_shardings",
    "parse_mesh",
    "place",
    "put_batch",
    "replicated",
    "shard_params",
    "spec",
    "state_shardings",
]
