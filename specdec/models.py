"""The public model object: weights (Flax NNX), config and tokenizer; `load` for HF checkpoints."""

import dataclasses
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specdec import checkpoint, sharding
from specdec.attention import IMPLEMENTATIONS as ATTENTION_CHOICES
from specdec.config import ModelConfig
from specdec.model import Deferred, Transformer, deferred_init
from specdec.tokenizer import Tokenizer


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Net:
    """A Transformer split for jit: static graph definition + parameter state (pytree leaves)."""

    graphdef: nnx.GraphDef = dataclasses.field(metadata=dict(static=True))
    params: nnx.State

    def module(self) -> Transformer:
        """Re-assemble the module (inside jit this is free: it only re-wires traced arrays)."""
        return nnx.merge(self.graphdef, self.params)

    @property
    def config(self) -> ModelConfig:
        return self.module().config

    @property
    def dtype(self):
        return self.module().dtype


def resolve_attention(attention: str) -> str:
    """Validate an attention implementation name ("auto" resolves per backend and shape)."""
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"attention={attention!r} is not one of {ATTENTION_CHOICES}")
    return attention


class Model:
    """A loaded Llama-family model: `config`, `dtype`, `tokenizer` (or None) and its weights."""

    def __init__(self, module: Transformer, tokenizer: Tokenizer | None = None):
        self.net = Net(*nnx.split(module))
        self.config: ModelConfig = module.config
        self.dtype = module.dtype
        self.attention: str = module.attention
        self.tokenizer = tokenizer
        # The (data, model) mesh the weights are sharded over (None: one device).
        self.mesh = sharding.mesh_of(self.net.params)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Model({c.architecture}, layers={c.num_layers}, d={c.hidden_size}, "
            f"vocab={c.vocab_size}, params={c.num_params() / 1e6:.1f}M, dtype={self.dtype.name}, "
            f"attention={self.attention}"
            + (f", mesh={dict(self.mesh.shape)}" if self.mesh is not None else "")
            + ")"
        )

    @staticmethod
    def random(
        config: ModelConfig,
        seed: int = 0,
        dtype=jnp.float32,
        attention: str = "auto",
        tokenizer: Tokenizer | None = None,
        mesh=None,
    ) -> "Model":
        """A model with random weights (std = config.initializer_range) built from a config.

        mesh: a (data, model) `jax.sharding.Mesh`; the weights are then initialised directly
        sharded over it (the same values as on one device).
        """
        make = lambda: Transformer(
            config, rngs=nnx.Rngs(seed), param_dtype=dtype, attention=resolve_attention(attention)
        )
        if mesh is None:
            return Model(make(), tokenizer)
        sharding.check_config(config, sharding.check_mesh(mesh))
        with deferred_init():  # keys only; each parameter is then drawn into its own sharding
            graphdef, state = nnx.split(make())

        def place(path, leaf):
            where = sharding.param_sharding(path, leaf, mesh)
            if isinstance(leaf, Deferred):
                return leaf.draw(where)
            return jax.device_put(leaf, where)  # norm weights and biases: small constants

        lazy = lambda x: isinstance(x, Deferred)
        state = jax.tree_util.tree_map_with_path(place, state, is_leaf=lazy)
        return Model(nnx.merge(graphdef, state), tokenizer)

    def module(self) -> Transformer:
        return self.net.module()

    def with_attention(self, attention: str) -> "Model":
        """The same weights with another attention implementation."""
        module = self.module()
        module.attention = resolve_attention(attention)
        return Model(module, self.tokenizer)

    def logits(self, input_ids) -> jax.Array:
        """float32 logits [B, L, V] of a full causal forward over equal-length input_ids [B, L]."""
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"input_ids must be a non-empty integer array [B, L], got shape "
                f"{ids.shape} dtype {ids.dtype}"
            )
        bad = (ids < 0) | (ids >= self.config.vocab_size)
        if bad.any():
            raise ValueError(
                f"token id {int(ids[bad][0])} is outside the vocabulary "
                f"[0, {self.config.vocab_size})"
            )
        return _full_logits(self.net, jnp.asarray(ids, jnp.int32))


@partial(jax.jit)
def _full_logits(net: Net, ids: jax.Array) -> jax.Array:
    module = net.module()
    batch, length = ids.shape
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return module.logits(module(ids, positions).hidden)


def load(path: str | os.PathLike, dtype=None, attention: str = "auto", mesh=None) -> Model:
    """Load an HF checkpoint directory (config.json + safetensors [+ tokenizer.json]) as a Model.

    dtype: weights and compute dtype (default: as stored in the checkpoint). attention: "auto"
    (Pallas kernel where available, else XLA), "xla", or a specific kernel name. mesh: a
    `jax.sharding.Mesh` with axes ("data", "model"): the weights are loaded sharded over it
    (tensor parallel over "model"; `generate` then splits the batch over "data").
    """
    module = checkpoint.load_transformer(
        path, dtype=dtype, attention=resolve_attention(attention), mesh=mesh
    )
    tokenizer = Tokenizer.from_dir(path)
    if tokenizer is not None:
        cfg = module.config
        if tokenizer.vocab_size > cfg.vocab_size:
            raise ValueError(
                f"tokenizer.json has {tokenizer.vocab_size} tokens but the model's "
                f"vocab_size is {cfg.vocab_size}"
            )
        if not tokenizer.eos_token_ids:
            tokenizer.eos_token_ids = cfg.eos_token_ids
    return Model(module, tokenizer)
