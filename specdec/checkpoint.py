"""HF checkpoint directories <-> Transformer parameters, through ONE mapping table.

A checkpoint directory holds `config.json`, weights as `model.safetensors` or shards listed in
`model.safetensors.index.json`, and optionally `tokenizer.json`. Every tensor's shape is checked
against the config before it is copied, so a mismatched checkpoint fails with a message naming
the tensor instead of a shape error deep inside jax.
"""

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from specdec import sharding
from specdec.config import ModelConfig
from specdec.model import Transformer

# Tensors some checkpoints carry that are derived, not learned; ignored when present.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """One row of the mapping table: an HF tensor and where it lives in our parameter tree."""

    hf_name: str  # may contain {i} for the layer index
    path: tuple  # our nnx state path; "{i}" placeholders become the layer index
    hf_shape: Callable[[ModelConfig], tuple[int, ...]]
    to_ours: Callable[[np.ndarray, ModelConfig], np.ndarray]  # HF tensor -> ours (or a piece)
    to_hf: Callable[[np.ndarray, ModelConfig], np.ndarray]  # our whole parameter -> HF tensor
    when: Callable[[ModelConfig], bool] = lambda cfg: True
    # Several HF tensors in one of our parameters (q/k/v, gate/up): each rule's to_ours gives
    # its piece, concatenated along this axis in table order; to_hf takes its piece back out.
    fuse_axis: int | None = None


def _same(x, cfg):
    return x


def _transpose(x, cfg):
    return x.T


def _bias(heads: Callable[[ModelConfig], int]):
    # HF bias [heads*H]  <->  ours [heads, H]
    return (lambda x, cfg: x.reshape(heads(cfg), cfg.head_dim), lambda x, cfg: x.reshape(-1))


# q / k / v  <->  ours qkv [D, K, G + 2, H] (G = N / K query heads per KV head, then k, then v)
def _q_in(x, cfg):  # HF [N*H, D] -> [D, K, G, H]; query head n = g * G + j uses KV head g
    return x.T.reshape(cfg.hidden_size, cfg.num_kv_heads, cfg.group_size, cfg.head_dim)


def _q_out(x, cfg):
    return x[:, :, : cfg.group_size].reshape(cfg.hidden_size, -1).T


def _kv_in(x, cfg):  # HF [K*H, D] -> [D, K, 1, H]
    return x.T.reshape(cfg.hidden_size, cfg.num_kv_heads, 1, cfg.head_dim)


def _kv_out(which: int):  # 0: k, 1: v
    return lambda x, cfg: x[:, :, cfg.group_size + which].reshape(cfg.hidden_size, -1).T


# gate / up  <->  ours gate_up [D, 2, F]
def _gate_up_in(x, cfg):  # HF [F, D] -> [D, 1, F]
    return x.T[:, None]


def _gate_up_out(which: int):  # 0: gate, 1: up
    return lambda x, cfg: x[:, which].T


_N = lambda cfg: cfg.num_heads
_K = lambda cfg: cfg.num_kv_heads
_qb_in, _qb_out = _bias(_N)
_kvb_in, _kvb_out = _bias(_K)
_has_bias = lambda cfg: cfg.attention_bias
_has_qk_norm = lambda cfg: cfg.qk_norm

_LAYER = "model.layers.{i}."
TABLE: tuple[TensorRule, ...] = (
    TensorRule(
        "model.embed_tokens.weight",
        ("embed",),
        lambda c: (c.vocab_size, c.hidden_size),
        _same,
        _same,
    ),
    TensorRule(
        _LAYER + "self_attn.q_proj.weight",
        ("layers", "{i}", "attn", "qkv"),
        lambda c: (c.num_heads * c.head_dim, c.hidden_size),
        _q_in,
        _q_out,
        fuse_axis=2,
    ),
    TensorRule(
        _LAYER + "self_attn.k_proj.weight",
        ("layers", "{i}", "attn", "qkv"),
        lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size),
        _kv_in,
        _kv_out(0),
        fuse_axis=2,
    ),
    TensorRule(
        _LAYER + "self_attn.v_proj.weight",
        ("layers", "{i}", "attn", "qkv"),
        lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size),
        _kv_in,
        _kv_out(1),
        fuse_axis=2,
    ),
    TensorRule(
        _LAYER + "self_attn.o_proj.weight",
        ("layers", "{i}", "attn", "o"),
        lambda c: (c.hidden_size, c.num_heads * c.head_dim),
        lambda x, c: x.T.reshape(c.num_heads, c.head_dim, c.hidden_size),
        lambda x, c: x.reshape(-1, c.hidden_size).T,
    ),
    TensorRule(
        _LAYER + "self_attn.q_proj.bias",
        ("layers", "{i}", "attn", "q_bias"),
        lambda c: (c.num_heads * c.head_dim,),
        _qb_in,
        _qb_out,
        _has_bias,
    ),
    TensorRule(
        _LAYER + "self_attn.k_proj.bias",
        ("layers", "{i}", "attn", "k_bias"),
        lambda c: (c.num_kv_heads * c.head_dim,),
        _kvb_in,
        _kvb_out,
        _has_bias,
    ),
    TensorRule(
        _LAYER + "self_attn.v_proj.bias",
        ("layers", "{i}", "attn", "v_bias"),
        lambda c: (c.num_kv_heads * c.head_dim,),
        _kvb_in,
        _kvb_out,
        _has_bias,
    ),
    TensorRule(
        _LAYER + "self_attn.q_norm.weight",
        ("layers", "{i}", "attn", "q_norm", "weight"),
        lambda c: (c.head_dim,),
        _same,
        _same,
        _has_qk_norm,
    ),
    TensorRule(
        _LAYER + "self_attn.k_norm.weight",
        ("layers", "{i}", "attn", "k_norm", "weight"),
        lambda c: (c.head_dim,),
        _same,
        _same,
        _has_qk_norm,
    ),
    TensorRule(
        _LAYER + "mlp.gate_proj.weight",
        ("layers", "{i}", "mlp", "gate_up"),
        lambda c: (c.intermediate_size, c.hidden_size),
        _gate_up_in,
        _gate_up_out(0),
        fuse_axis=1,
    ),
    TensorRule(
        _LAYER + "mlp.up_proj.weight",
        ("layers", "{i}", "mlp", "gate_up"),
        lambda c: (c.intermediate_size, c.hidden_size),
        _gate_up_in,
        _gate_up_out(1),
        fuse_axis=1,
    ),
    TensorRule(
        _LAYER + "mlp.down_proj.weight",
        ("layers", "{i}", "mlp", "down"),
        lambda c: (c.hidden_size, c.intermediate_size),
        _transpose,
        _transpose,
    ),
    TensorRule(
        _LAYER + "input_layernorm.weight",
        ("layers", "{i}", "attn_norm", "weight"),
        lambda c: (c.hidden_size,),
        _same,
        _same,
    ),
    TensorRule(
        _LAYER + "post_attention_layernorm.weight",
        ("layers", "{i}", "mlp_norm", "weight"),
        lambda c: (c.hidden_size,),
        _same,
        _same,
    ),
    TensorRule("model.norm.weight", ("norm", "weight"), lambda c: (c.hidden_size,), _same, _same),
    TensorRule(
        "lm_head.weight",
        ("lm_head",),
        lambda c: (c.vocab_size, c.hidden_size),
        _transpose,
        _transpose,
        lambda c: not c.tie_word_embeddings,
    ),
)


def expand_table(cfg: ModelConfig) -> list[tuple[str, tuple, TensorRule]]:
    """(hf_name, our path, rule) for every tensor this config has."""
    rows = []
    for rule in TABLE:
        if not rule.when(cfg):
            continue
        layers = range(cfg.num_layers) if "{i}" in rule.hf_name else [None]
        for i in layers:
            name = rule.hf_name.format(i=i) if i is not None else rule.hf_name
            path = tuple(i if p == "{i}" else p for p in rule.path)
            rows.append((name, path, rule))
    return rows


# ---- reading --------------------------------------------------------------------------------


def read_config(path: str | os.PathLike) -> ModelConfig:
    """ModelConfig from `<path>/config.json`, with a clear error when it is absent or unusable.

    Errors about the file's contents are ValueErrors that start with the file's path.
    """
    directory = Path(path)
    if directory.is_file():
        raise NotADirectoryError(
            f"{str(directory)!r} is a file; a checkpoint is the directory holding config.json "
            f"and the weights (here perhaps {str(directory.parent)!r})"
        )
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(directory)!r} does not exist")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in checkpoint directory {str(directory)!r}")
    hf = _read_json(config_file)
    try:
        return ModelConfig.from_hf(hf)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{config_file}: {err}") from err


def _read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        contents = _read_json(index)
        weight_map = contents.get("weight_map") if isinstance(contents, dict) else None
        if not weight_map or not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no 'weight_map'")
        files = sorted({directory / name for name in weight_map.values()})
        missing = [str(f.name) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"shards listed in {index.name} are missing: {missing}")
        return files
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(p.name for p in directory.glob("*.safetensors"))
    if others:
        return [directory / name for name in others]
    found = sorted(p.name for p in directory.iterdir())
    raise FileNotFoundError(
        f"no safetensors weights in {str(directory)!r} (expected model.safetensors or "
        f"model.safetensors.index.json; found {found})"
    )


def read_tensors(directory: Path) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint as numpy arrays (bf16 arrives as ml_dtypes.bfloat16).

    A truncated or corrupt file raises ValueError naming it (safetensors checks the header and
    that the data covers every tensor it lists).
    """
    tensors: dict[str, np.ndarray] = {}
    for file in _weight_files(directory):
        try:
            with safe_open(str(file), framework="np") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    tensors[name] = f.get_tensor(name)
        except SafetensorError as err:
            raise ValueError(
                f"{file} is not a readable safetensors file (truncated or corrupt?): {err}"
            ) from err
    return tensors


def checkpoint_dtype(directory: Path, tensors: dict[str, np.ndarray]) -> jnp.dtype:
    """The floating dtype the checkpoint stores its weights in."""
    dtypes = {
        np.dtype(t.dtype)
        for t in tensors.values()
        if np.issubdtype(t.dtype, np.floating) or t.dtype == ml_dtypes.bfloat16
    }
    if len(dtypes) == 1:
        return jnp.dtype(dtypes.pop())
    return jnp.dtype(jnp.float32)


def build_params(cfg: ModelConfig, tensors: dict[str, np.ndarray], dtype, mesh=None) -> dict:
    """Nested pure dict of parameters for `Transformer`, checked against the config.

    With a (data, model) `mesh`, each array is placed shard by shard by `specdec.sharding`'s
    rules (every device receives only its slice of the host tensor).
    """
    values: dict[tuple, np.ndarray] = {}  # our path -> value (fused pieces concatenated)
    expected = set()
    for name, path, rule in expand_table(cfg):
        expected.add(name)
        if name not in tensors:
            raise ValueError(
                f"checkpoint is missing tensor {name!r} required by the config "
                f"({cfg.architecture}, {cfg.num_layers} layers)"
            )
        tensor = tensors[name]
        want = rule.hf_shape(cfg)
        if tuple(tensor.shape) != want:
            raise ValueError(
                f"tensor {name!r} has shape {tuple(tensor.shape)} but config.json implies "
                f"{want}; the weights do not match the config"
            )
        value = rule.to_ours(np.asarray(tensor), cfg)
        if rule.fuse_axis is not None and path in values:
            value = np.concatenate([values[path], value.astype(values[path].dtype)], rule.fuse_axis)
        values[path] = value
    pure: dict = {}
    for path, value in values.items():
        node = pure
        for key in path[:-1]:
            node = node.setdefault(key, {})
        if mesh is None:
            node[path[-1]] = jnp.asarray(value, dtype=dtype)
        else:
            what = f"parameter {'.'.join(map(str, path))}"
            where = sharding.param_named(path[-1], value.shape, mesh, what)
            node[path[-1]] = sharding.host_array(np.asarray(value).astype(dtype), where)
    unexpected = sorted(
        n for n in tensors if n not in expected and not n.endswith(_IGNORED_SUFFIXES)
    )
    if unexpected:
        shown = unexpected[:8]
        raise ValueError(
            f"checkpoint has {len(unexpected)} tensors the config does not explain, e.g. "
            f"{shown}; is config.json (layers, tie_word_embeddings, architecture) right?"
        )
    return pure


def load_transformer(
    path: str | os.PathLike, dtype=None, attention: str = "xla", mesh=None
) -> Transformer:
    """A Transformer with an HF checkpoint directory's weights, in `dtype` (default: as stored).

    mesh: a (data, model) `jax.sharding.Mesh`; the weights are then created sharded over it
    (tensor parallel over heads / MLP / vocabulary, see `specdec.sharding`).
    """
    directory = Path(path)
    cfg = read_config(directory)
    if mesh is not None:
        sharding.check_config(cfg, sharding.check_mesh(mesh), f"{str(directory)!r}")
    tensors = read_tensors(directory)
    dtype = jnp.dtype(dtype) if dtype is not None else checkpoint_dtype(directory, tensors)
    pure = build_params(cfg, tensors, dtype, mesh)
    abstract = nnx.eval_shape(
        lambda: Transformer(cfg, rngs=nnx.Rngs(0), param_dtype=dtype, attention=attention)
    )
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


# ---- writing --------------------------------------------------------------------------------


def save_transformer(module: Transformer, path: str | os.PathLike, dtype=None) -> None:
    """Write `config.json` + `model.safetensors` (HF layout) for a Transformer."""
    cfg = module.config
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    pure = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    dtype = np.dtype(dtype or module.dtype)
    tensors = {}
    for name, path_, rule in expand_table(cfg):
        node = pure
        for key in path_:
            node = node[key]
        value = np.asarray(jnp.asarray(node, dtype=jnp.float32))
        tensors[name] = np.ascontiguousarray(rule.to_hf(value, cfg)).astype(dtype)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    torch_dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[dtype.name]
    with open(directory / "config.json", "w") as f:
        json.dump(cfg.to_hf(torch_dtype=torch_dtype), f, indent=2)
