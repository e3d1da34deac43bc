"""EAGLE draft heads: EAGLE-1/2 (`version=1`) and EAGLE-3 (`version=3`) on top of a loaded target.

Dimension letters: B batch, T tree nodes, W catch-up width, P prompt, D model width, N/K query/KV
heads, H head dim, V target vocabulary, Vd draft vocabulary, X fused target layers.

The head drafts at "feature level". Its input at position t is [emb(token t+1) ; feature t], and
its output there is its prediction of feature t+1, whose logits propose token t+2:

    EAGLE-1/2  feature = the target's last hidden state after the final norm;
               x = fc([emb ; feature]) (2D -> D, bias), then decoder layer(s) whose first input
               norm is omitted; logits = the target's frozen LM head on the output.
    EAGLE-3    feature = fc(concat of the outputs of `target_layers`) (XD -> D, no bias); the first
               layer's q/k/v read [input_norm(emb) ; hidden_norm(x)] (2D wide) while the residual
               stays D wide; logits = own lm_head(norm(output)) over Vd draft tokens, mapped to
               target ids by `draft_ids` (q is zero outside the draft vocabulary).

Both feed their own predicted feature back when growing the tree (the target's feature of a draft
token is unknown until verification). The head keeps its own KV cache of the accepted prefix:
prefill absorbs positions 0..P-2 of the prompt and keeps feature P-1 pending; each step first
absorbs the pending features of the tokens committed last step (the catch-up block, ending with
the position before the root, whose output drafts the root's children), then runs one forward per
tree level. Tree node i (depth >= 1) sits at head position root_pos + depth - 1 and region slot
i - 1, under the ancestor mask, reading its parent's predicted feature.
"""

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from specdec import sharding
from specdec.attention import attend, attend_block, kernel_slots
from specdec.cache import KVCache, Region
from specdec.checkpoint import read_tensors
from specdec.config import ModelConfig
from specdec.contract import DraftContext, Drafter, Policy, PrefillInputs, StepOutcome
from specdec.model import MLP, RMSNorm, _einsum, _init, _init_fused, join_qkv, split_qkv
from specdec.models import Model, Net
from specdec.rope import apply_rotary
from trees.static import Static

#: EAGLE-1's published 26-node tree is too wide for tiny vocabularies; this one needs 3 tokens
DEFAULT_TREE = ((0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1), (0, 0, 0, 0))


def default_target_layers(num_layers: int) -> tuple[int, ...]:
    """EAGLE-3's taps: outputs of layers 1, L/2 - 1 and L - 4, clipped into [0, L)."""
    taps = (1, num_layers // 2 - 1, num_layers - 4)
    return tuple(min(max(t, 0), num_layers - 1) for t in taps)


class HeadLayer(nnx.Module):
    """A Llama decoder layer whose attention projections may read a 2D-wide input (EAGLE-3)."""

    def __init__(self, cfg: ModelConfig, *, fused: bool, input_norm: bool, rngs, param_dtype):
        d, n, k, h, std = (
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.initializer_range,
        )
        self.fused = fused  # q/k/v read [input_norm(emb) ; hidden_norm(x)]
        self.has_input_norm = input_norm or fused  # EAGLE-1 omits the first layer's input norm
        if self.has_input_norm:
            self.input_norm = RMSNorm(d, cfg.rms_norm_eps, param_dtype=param_dtype)
        if fused:
            self.hidden_norm = RMSNorm(d, cfg.rms_norm_eps, param_dtype=param_dtype)
        width = 2 * d if fused else d  # W
        self.qkv = _init_fused(
            rngs, [(width, n, h), (width, k, h), (width, k, h)], std, param_dtype, join_qkv
        )  # [W, K, N/K + 2, H], as the target's `Attention.qkv`
        self.o = _init(rngs, (n, h, d), std, param_dtype)  # [N, H, D]
        self.post_norm = RMSNorm(d, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = MLP(cfg, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x, emb, cos, sin, dtype, attention):
        """x, emb [B, T, D] -> [B, T, D]; `attention(q, k, v)` decides what the block sees."""
        if self.fused:
            a = jnp.concatenate([self.input_norm(emb), self.hidden_norm(x)], axis=-1)  # [B,T,2D]
        elif self.has_input_norm:
            a = self.input_norm(x)
        else:
            a = x
        q, k, v = split_qkv(_einsum("BTW,WKJH->BTKJH", a, self.qkv[...], dtype))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        x = x + _einsum("BTNH,NHD->BTD", attention(q, k, v), self.o[...], dtype)
        return x + self.mlp(self.post_norm(x), dtype)


class EagleHead(nnx.Module):
    """The trainable part of an EAGLE head (the embedding and, for EAGLE-1, the LM head are the
    target's)."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        version: int,
        num_layers: int,
        num_taps: int,
        draft_vocab: int,
        rngs: nnx.Rngs,
        param_dtype,
    ):
        d, std = cfg.hidden_size, cfg.initializer_range
        self.version = version
        if version == 1:
            self.fc = _init(rngs, (2 * d, d), std, param_dtype)  # [2D, D] over [emb ; feature]
            self.fc_bias = nnx.Param(jnp.zeros((d,), param_dtype))
        else:
            self.fc = _init(rngs, (num_taps * d, d), std, param_dtype)  # [XD, D]
            self.norm = RMSNorm(d, cfg.rms_norm_eps, param_dtype=param_dtype)
            self.lm_head = _init(rngs, (d, draft_vocab), std, param_dtype)  # [D, Vd]
        self.layers = nnx.List(
            [
                HeadLayer(
                    cfg,
                    fused=version == 3 and i == 0,
                    input_norm=i > 0,
                    rngs=rngs,
                    param_dtype=param_dtype,
                )
                for i in range(num_layers)
            ]
        )


def fuse(head: EagleHead, taps: tuple[jax.Array, ...], dtype) -> jax.Array:
    """EAGLE-3's input feature [B, T, D] = fc(concat of the target taps) (3D -> D, no bias)."""
    return _einsum("BTX,XD->BTD", jnp.concatenate(taps, axis=-1), head.fc[...], dtype)


def head_forward(head, target, tokens, feats, positions, attention, dtype) -> jax.Array:
    """The head over a block: tokens [B, T], feats [B, T, D], positions [B, T] -> output [B, T, D].

    attention(layer, q, k, v) -> [B, T, N, H] decides what each layer attends to: the head's cache
    at inference (`Eagle._run`), the training-time-test mask in training (train.eagle_steps).
    """
    emb = target.embed_tokens(tokens)  # [B, T, D]
    feats = feats.astype(dtype)
    if head.version == 1:
        x = _einsum("BTE,ED->BTD", jnp.concatenate([emb, feats], -1), head.fc[...], dtype)
        x = x + head.fc_bias[...].astype(dtype)
    else:
        x = feats
    cos, sin = target.rotary(positions)
    for index, layer in enumerate(head.layers):
        x = layer(x, emb, cos, sin, dtype, lambda q, k, v, i=index: attention(i, q, k, v))
    return x


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EagleState:
    """The head's own state, carried across steps by the decode loop."""

    cache: KVCache  # the head's cache; lengths = positions absorbed (<= the target's)
    feats: jax.Array  # [B, W, D] features of positions lengths + j, j < count, not yet absorbed
    count: jax.Array  # [B] int32 pending features (the tokens committed last step)
    pred: jax.Array  # [B, T, D] this step's predicted feature of each tree node (node 0: root)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Eagle(Drafter):
    """An EAGLE-1/2 or EAGLE-3 draft head for a loaded target (see the module docstring)."""

    head: Net  # EagleHead weights
    target: Net  # the target's weights (embedding, LM head, RoPE), frozen and shared, not copied
    draft_ids: jax.Array  # [Vd] int32 target id of each draft token (EAGLE-3's d2t, as ids)
    version: int = dataclasses.field(metadata=dict(static=True))
    target_layers: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    full_vocab: bool = dataclasses.field(metadata=dict(static=True))  # draft_ids == arange(V)

    supported_children = frozenset({"top", "sample", "sample_without_replacement"})

    @staticmethod
    def random(
        target: Model,
        version: int = 1,
        seed: int = 0,
        num_layers: int = 1,
        draft_vocab: int | None = None,
        target_layers: tuple[int, ...] | None = None,
    ) -> "Eagle":
        """An untrained head (std = the target's initializer_range) for tests and benchmarks.

        draft_vocab (EAGLE-3 only): size of a reduced draft vocabulary, a seeded random subset of
        the target's ids standing in for the most frequent tokens of a training set.
        """
        if not isinstance(target, Model):
            raise TypeError(f"Eagle.random takes a specdec.Model, got {type(target).__name__}")
        if version not in (1, 3):
            raise ValueError(f"EAGLE version must be 1 (EAGLE-1/2) or 3, got {version!r}")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an integer >= 1, got {num_layers!r}")
        cfg = target.config
        vocab = cfg.vocab_size
        if version == 1:
            if draft_vocab is not None or target_layers is not None:
                raise ValueError(
                    "draft_vocab and target_layers are EAGLE-3 options; EAGLE-1/2 reads the "
                    "target's final hidden state and uses its LM head"
                )
            taps, ids = (), np.arange(vocab)
        else:
            taps = tuple(target_layers) if target_layers is not None else None
            taps = taps if taps is not None else default_target_layers(cfg.num_layers)
            if not taps or any(not 0 <= t < cfg.num_layers for t in taps):
                raise ValueError(
                    f"{target_layers=} must be layers of the target's {cfg.num_layers}"
                )
            size = vocab if draft_vocab is None else draft_vocab
            if not 1 <= size <= vocab:
                raise ValueError(f"{draft_vocab=} must be in [1, {vocab}]")
            ids = np.arange(vocab) if size == vocab else _random_subset(seed, vocab, size)
        module = EagleHead(
            cfg,
            version=version,
            num_layers=num_layers,
            num_taps=len(taps),
            draft_vocab=len(ids),
            rngs=nnx.Rngs(seed),
            param_dtype=target.dtype,
        )
        return Eagle(
            head=_head_net(module, target),
            target=target.net,
            draft_ids=jnp.asarray(ids, jnp.int32),
            version=version,
            target_layers=taps,
            full_vocab=len(ids) == vocab,
        )

    @staticmethod
    def load(path: str | os.PathLike, target: Model) -> "Eagle":
        """Load a head saved in the public EAGLE layout (see `save`) for a loaded target."""
        if not isinstance(target, Model):
            raise TypeError(f"Eagle.load takes a specdec.Model, got {type(target).__name__}")
        directory = Path(path)
        if not (directory / "config.json").is_file():
            raise ValueError(f"{str(directory)!r} has no config.json: not an EAGLE head directory")
        hf = json.loads((directory / "config.json").read_text())
        tensors = read_tensors(directory)
        version = 3 if any(name.startswith("midlayer.") for name in tensors) else 1
        cfg = target.config
        for ours, theirs in (
            ("hidden_size", "hidden_size"),
            ("num_heads", "num_attention_heads"),
            ("num_kv_heads", "num_key_value_heads"),
            ("vocab_size", "vocab_size"),
        ):
            if theirs in hf and hf[theirs] != getattr(cfg, ours):
                raise ValueError(
                    f"the head's {theirs}={hf[theirs]} does not match the target's "
                    f"{getattr(cfg, ours)}: it was trained for another model"
                )
        head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
        if head_dim != cfg.head_dim:
            raise ValueError(f"the head's head_dim={head_dim} != the target's {cfg.head_dim}")
        head_cfg = dataclasses.replace(
            cfg,
            intermediate_size=hf.get("intermediate_size", cfg.intermediate_size),
            rms_norm_eps=hf.get("rms_norm_eps", cfg.rms_norm_eps),
        )
        num_layers = 1 if version == 3 else hf.get("num_hidden_layers", 1)
        taps: tuple[int, ...] = ()
        ids = np.arange(cfg.vocab_size)
        if version == 3:
            eagle = hf.get("eagle_config") or {}
            taps = tuple(
                eagle.get("eagle_aux_hidden_state_layer_ids")
                or default_target_layers(cfg.num_layers)
            )
            ids = _draft_ids(tensors, cfg.vocab_size)
        module = EagleHead(
            head_cfg,
            version=version,
            num_layers=num_layers,
            num_taps=len(taps),
            draft_vocab=len(ids),
            rngs=nnx.Rngs(0),
            param_dtype=target.dtype,
        )
        for name, where, to_ours, _, *part in _layout(module):
            if name not in tensors:
                raise ValueError(f"{str(directory)!r} lacks tensor {name!r}")
            param = _param(module, where)
            index = part[0] if part else ...
            value = to_ours(np.asarray(tensors[name], np.float32))
            if value.shape != param[index].shape:
                raise ValueError(
                    f"tensor {name!r} has shape {tensors[name].shape}, which does not fit the "
                    f"head's {param[index].shape} (in our layout)"
                )
            param[...] = param[...].at[index].set(jnp.asarray(value, target.dtype))
        return Eagle(
            head=_head_net(module, target),
            target=target.net,
            draft_ids=jnp.asarray(ids, jnp.int32),
            version=version,
            target_layers=taps,
            full_vocab=len(ids) == cfg.vocab_size,
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write config.json + model.safetensors in the public layout of EAGLE heads.

        EAGLE-3: `fc`, `midlayer.*`, `norm`, `lm_head`, `d2t` (draft id -> target id offset) and
        `t2d` (target ids in the draft vocabulary), as in the EAGLE and SpecForge repositories.
        EAGLE-1/2: `fc` (with bias) and `layers.{i}.*`. The embedding is the target's: not saved.
        """
        module = self.head.module()
        if self.version == 3 and len(module.layers) != 1:
            raise ValueError(
                f"the public EAGLE-3 layout has one `midlayer`; this head has "
                f"{len(module.layers)} layers"
            )
        cfg = self.target.config
        tensors = {
            name: np.ascontiguousarray(
                to_hf(np.asarray(_param(module, where)[part[0] if part else ...], np.float32))
            )
            for name, where, _, to_hf, *part in _layout(module)
        }
        vocab = cfg.vocab_size
        hf = {
            "architectures": [
                "LlamaForCausalLMEagle3" if self.version == 3 else "LlamaForCausalLM"
            ],
            "model_type": "llama",
            "hidden_size": cfg.hidden_size,
            "intermediate_size": module.layers[0].mlp.gate_up.shape[2],
            "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "num_hidden_layers": len(module.layers),
            "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope.theta,
            "max_position_embeddings": cfg.max_position_embeddings,
            "vocab_size": vocab,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
        }
        if self.version == 3:
            ids = np.asarray(self.draft_ids, np.int64)
            tensors["d2t"] = ids - np.arange(len(ids), dtype=np.int64)
            tensors["t2d"] = np.zeros(vocab, bool)
            tensors["t2d"][ids] = True
            hf["draft_vocab_size"] = len(ids)
            hf["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": list(self.target_layers)}
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        (directory / "config.json").write_text(json.dumps(hf, indent=2) + "\n")

    # ---- the contract --------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.target.config.vocab_size  # drafts are in the target's vocabulary

    def default_policy(self) -> Policy:
        return Static(DEFAULT_TREE)

    def draft_cost(self, target_config) -> float:
        """Head layers over target layers (the head is one decoder layer or a few)."""
        return len(self.head.module().layers) / target_config.num_layers

    @staticmethod
    def catch_up_width(policy: Policy) -> int:
        # A step commits the root plus at most max_depth accepted drafts.
        return policy.max_depth + 1

    def init_state(self, batch, capacity, policy):
        cfg = self.target.config
        width, nodes = self.catch_up_width(policy), policy.draft_nodes
        dtype = self.target.dtype
        cache = KVCache.create(
            len(self.head.module().layers),
            batch,
            kernel_slots(capacity + max(width, nodes)),
            cfg.num_kv_heads,
            cfg.head_dim,
            dtype,
        )
        return EagleState(
            cache=cache,
            feats=jnp.zeros((batch, width, cfg.hidden_size), dtype),
            count=jnp.zeros((batch,), jnp.int32),
            pred=jnp.zeros((batch, nodes, cfg.hidden_size), dtype),
        )

    def prefill(self, state, inputs: PrefillInputs):
        prompt, lens = inputs.prompt, inputs.prompt_lens
        batch, length = prompt.shape
        rows = jnp.arange(batch)
        # Head input at position t is [emb(token t+1) ; feature t]; token P is the sampled first.
        following = jnp.concatenate([prompt[:, 1:], jnp.zeros((batch, 1), prompt.dtype)], axis=1)
        following = following.at[rows, lens - 1].set(inputs.first)  # [B, P]
        feats = self._fuse(inputs.features.hidden, inputs.features.layers)  # [B, P, D]
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        # Positions 0..P-2 are absorbed; P-1 stays pending so every step starts with a catch-up.
        # (Rows write junk at slots >= lengths; the next catch-up overwrites it.)
        _, cache = self._run(
            following, feats, positions, state.cache, Region.causal(batch, length), prefix=False
        )
        pending = feats[rows, lens - 1]  # [B, D]
        return dataclasses.replace(
            state,
            cache=cache.with_lengths(lens - 1),
            feats=state.feats.at[:, 0].set(pending.astype(state.feats.dtype)),
            count=jnp.ones((batch,), jnp.int32),
        )

    def expander(self, ctx, policy):
        return _EagleExpander(self, ctx)

    def observe(self, state, ctx, outcome: StepOutcome):
        width = state.feats.shape[1]
        path = outcome.verdict.path[:, :width]  # [B, W] root first
        gather = lambda f: jnp.take_along_axis(f, path[:, :, None], axis=1)  # [B, W, D]
        feats = self._fuse(
            gather(outcome.features.hidden), tuple(map(gather, outcome.features.layers))
        )
        return dataclasses.replace(
            state, feats=feats.astype(state.feats.dtype), count=outcome.committed.astype(jnp.int32)
        )

    # ---- the head's forward ---------------------------------------------------------------------

    def _fuse(self, hidden: jax.Array, layers: tuple[jax.Array, ...]) -> jax.Array:
        """The head's input feature [B, T, D] from the target's (EAGLE-3: fc over the taps)."""
        if self.version == 1:
            return hidden
        return fuse(self.head.module(), layers, self.target.dtype)

    def _run(self, tokens, feats, positions, cache, region, *, prefix=True):
        """Head forward of a block: tokens [B, T], feats [B, T, D] -> (output [B, T, D], cache)."""
        target = self.target.module()

        def attention(index, q, k, v):
            nonlocal cache
            cache = cache.write(index, k, v, region.offsets)
            if not prefix:
                return attend_block(
                    q, k, v, region.mask, impl=target.attention, causal=region.is_causal
                )
            return attend(q, cache.read(index), cache.lengths, region.mask, impl=target.attention)

        x = head_forward(
            self.head.module(), target, tokens, feats, positions, attention, target.dtype
        )
        return x, cache

    def logits(self, x: jax.Array) -> jax.Array:
        """Draft logits [..., V] float32 of predicted features x [..., D] (-inf outside Vd)."""
        if self.version == 1:
            return self.target.module().logits(x)
        head = self.head.module()
        dtype = self.target.dtype
        h = head.norm(x).astype(dtype)
        draft = jnp.einsum(
            "...D,DV->...V",
            h,
            head.lm_head[...].astype(dtype),
            precision=_precision(dtype),
            preferred_element_type=jnp.float32,
        )  # [..., Vd]
        if self.full_vocab:
            return draft
        full = jnp.full((*draft.shape[:-1], self.vocab_size), -jnp.inf, jnp.float32)
        return full.at[..., self.draft_ids].set(draft)


def _head_net(module: EagleHead, target: Model) -> Net:
    """The head's weights, sharded like the target's (specdec.sharding rules) when it has a mesh."""
    net = Net(*nnx.split(module))
    return net if target.mesh is None else sharding.shard_params(net, target.mesh)


def _precision(dtype) -> jax.lax.Precision:
    f32 = jnp.dtype(dtype) == jnp.float32
    return jax.lax.Precision.HIGHEST if f32 else jax.lax.Precision.DEFAULT


def _random_subset(seed: int, vocab: int, size: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(vocab, size, replace=False))


def _layout(module: EagleHead) -> list[tuple]:
    """The one table from public tensor names to (our parameter path, to_ours, to_hf[, index]).

    HF Linear weights are [out, in]; ours are [in, ...] with heads split out. `index`, where
    present, is the tensor's part of a fused parameter (q / k / v of qkv, gate / up of gate_up).
    """
    t = lambda x: x.T
    rows = []
    if module.version == 1:
        rows += [("fc.weight", "fc", t, t), ("fc.bias", "fc_bias", None, None)]
    else:
        rows += [("fc.weight", "fc", t, t), ("norm.weight", "norm.weight", None, None)]
        rows += [("lm_head.weight", "lm_head", t, t)]
    for i, layer in enumerate(module.layers):
        prefix = "midlayer." if module.version == 3 else f"layers.{i}."
        width, kv_heads, slots, head_dim = layer.qkv.shape  # slots: G query heads, k, v
        group = slots - 2
        heads = kv_heads * group
        fold = lambda *shape: (  # HF [out, W] <-> ours [W, ...]
            lambda x, shape=shape: x.T.reshape(*shape),
            lambda x, w=shape[0]: x.reshape(w, -1).T,
        )
        whole = slice(None)
        attn = "self_attn."
        rows += [
            (
                prefix + attn + "q_proj.weight",
                f"layers.{i}.qkv",
                *fold(width, kv_heads, group, head_dim),
                (whole, whole, slice(0, group)),
            ),
            (
                prefix + attn + "k_proj.weight",
                f"layers.{i}.qkv",
                *fold(width, kv_heads, head_dim),
                (whole, whole, group),
            ),
            (
                prefix + attn + "v_proj.weight",
                f"layers.{i}.qkv",
                *fold(width, kv_heads, head_dim),
                (whole, whole, group + 1),
            ),
            (
                prefix + attn + "o_proj.weight",
                f"layers.{i}.o",
                lambda x, n=heads, h=head_dim: x.T.reshape(n, h, -1),
                lambda x: x.reshape(-1, x.shape[-1]).T,
            ),
            (prefix + "mlp.gate_proj.weight", f"layers.{i}.mlp.gate_up", t, t, (whole, 0)),
            (prefix + "mlp.up_proj.weight", f"layers.{i}.mlp.gate_up", t, t, (whole, 1)),
            (prefix + "mlp.down_proj.weight", f"layers.{i}.mlp.down", t, t),
            (
                prefix + "post_attention_layernorm.weight",
                f"layers.{i}.post_norm.weight",
                None,
                None,
            ),
        ]
        if layer.has_input_norm:
            rows.append(
                (prefix + "input_layernorm.weight", f"layers.{i}.input_norm.weight", None, None)
            )
        if layer.fused:
            rows.append(
                (prefix + "hidden_norm.weight", f"layers.{i}.hidden_norm.weight", None, None)
            )
    same = lambda x: x
    return [(n, w, a or same, b or same, *part) for n, w, a, b, *part in rows]


def _param(module: nnx.Module, where: str) -> nnx.Param:
    node = module
    for part in where.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _draft_ids(tensors: dict[str, np.ndarray], vocab: int) -> np.ndarray:
    """Target id of each draft token from the public `d2t` offsets (checked against `t2d`)."""
    if "d2t" not in tensors:
        raise ValueError("an EAGLE-3 head needs the `d2t` tensor (draft id -> target id offset)")
    d2t = np.asarray(tensors["d2t"], np.int64)
    ids = d2t + np.arange(len(d2t))
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= vocab or len(np.unique(ids)) != len(ids):
        raise ValueError(f"d2t maps draft ids outside the target's {vocab} tokens or twice")
    if "t2d" in tensors:
        t2d = np.asarray(tensors["t2d"]).astype(bool)
        if t2d.shape != (vocab,) or set(np.flatnonzero(t2d)) != set(ids.tolist()):
            raise ValueError("t2d and d2t disagree on the draft vocabulary")
    return ids


@dataclasses.dataclass(frozen=True)
class _EagleExpander:
    drafter: Eagle
    ctx: DraftContext

    def root(self, state: EagleState):
        """Catch up on last step's committed tokens; the last output drafts the root's children."""
        cache, history = state.cache, self.ctx.history
        batch, width = state.feats.shape[:2]
        positions = cache.lengths[:, None] + jnp.arange(width, dtype=jnp.int32)  # [B, W]
        tokens = jnp.take_along_axis(history, jnp.minimum(positions + 1, history.shape[1] - 1), 1)
        region = Region.causal(batch, width)
        live = jnp.arange(width)[None, None, :] < state.count[:, None, None]  # [B, 1, W]
        region = region.masked(live)
        x, cache = self.drafter._run(tokens, state.feats, positions, cache, region)
        last = jnp.take_along_axis(x, jnp.maximum(state.count - 1, 0)[:, None, None], axis=1)[:, 0]
        state = dataclasses.replace(
            state,
            cache=cache.advance(state.count),
            pred=state.pred.at[:, 0].set(last.astype(state.pred.dtype)),
        )
        return self.drafter.logits(last), state

    def expand(self, state: EagleState, tree, frontier):
        """One tree level: node i at head position root_pos + depth - 1, region slot i - 1."""
        cache = state.cache
        rows = jnp.arange(frontier.shape[0])[:, None]
        tokens = jnp.take_along_axis(tree.tokens, frontier, axis=1)  # [B, F]
        depths = jnp.take_along_axis(tree.depths, frontier, axis=1)  # [B, F]
        parents = jnp.take_along_axis(tree.parents, frontier, axis=1)  # [B, F]
        feats = state.pred[rows, jnp.maximum(parents, 0)]  # [B, F, D] parent's predicted feature
        anc = jnp.take_along_axis(tree.ancestor_mask(), frontier[:, :, None], axis=1)  # [B, F, T]
        # Region slot r holds node r + 1 (the root has no slot: its feature is still unknown).
        mask = jnp.pad(anc[:, :, 1:], ((0, 0), (0, 0), (0, 1)))
        offsets = jnp.where(frontier > 0, frontier - 1, cache.capacity)  # the root: dropped
        x, cache = self.drafter._run(
            tokens,
            feats,
            cache.lengths[:, None] + depths - 1,
            cache,
            Region(offsets=offsets, mask=mask),
        )
        pred = state.pred.at[rows, frontier].set(x.astype(state.pred.dtype))
        return self.drafter.logits(x), dataclasses.replace(state, cache=cache, pred=pred)
