"""An independent small LM as drafter (classic speculative decoding, SpecInfer-style trees)."""

import dataclasses

import jax
import jax.numpy as jnp

from specdec.attention import kernel_slots
from specdec.cache import KVCache, Region
from specdec.contract import DraftContext, Drafter, Policy, PrefillInputs
from specdec.models import Model, Net
from trees.static import Chain


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DraftModelState:
    cache: KVCache  # the draft model's own cache; lengths may lag the target's by a few tokens


@jax.tree_util.register_pytree_node_class
class DraftModel(Drafter):
    """Drafts with a separate small causal LM that shares the target's tokenizer.

    Each step first runs a *catch-up* block over the tokens the target committed since the draft
    cache last advanced, ending with the root (at most max_depth + 2 tokens, one forward), then one
    forward per tree level over that level's nodes under the tree mask.
    """

    supported_children = frozenset({"top", "sample", "sample_without_replacement"})

    def __init__(self, model: Model):
        if not isinstance(model, Model):
            raise TypeError(f"DraftModel takes a specdec.Model, got {type(model).__name__}")
        self.net: Net = model.net
        self.tokenizer_fingerprint = model.tokenizer.fingerprint if model.tokenizer else None

    def tree_flatten(self):
        return (self.net,), self.tokenizer_fingerprint

    @classmethod
    def tree_unflatten(cls, fingerprint, children):
        drafter = object.__new__(cls)
        drafter.net, drafter.tokenizer_fingerprint = children[0], fingerprint
        return drafter

    @property
    def vocab_size(self) -> int:
        return self.net.config.vocab_size

    def default_policy(self) -> Policy:
        return Chain(4)

    def draft_cost(self, target_config) -> float:
        """Parameters read per forward, draft over target."""
        return self.net.config.num_params() / target_config.num_params()

    def check(self, target_config, target_tokenizer, policy):
        super().check(target_config, target_tokenizer, policy)
        if (
            target_tokenizer is not None
            and self.tokenizer_fingerprint is not None
            and target_tokenizer.fingerprint != self.tokenizer_fingerprint
        ):
            raise ValueError(
                "draft model and target have different tokenizers (their vocabularies "
                "differ); a DraftModel must share the target's tokenizer"
            )

    @staticmethod
    def catch_up_width(policy: Policy) -> int:
        # Tokens committed per step are at most max_depth + 1, plus the new root.
        return policy.max_depth + 2

    def init_state(self, batch, capacity, policy):
        cfg = self.net.config
        extra = max(self.catch_up_width(policy), policy.draft_nodes)
        if cfg.sliding_window is not None and capacity + extra > cfg.sliding_window:
            raise ValueError(
                f"the draft model's cache would span {capacity + extra} positions but its "
                f"sliding_window is {cfg.sliding_window}; windowed attention is not implemented"
            )
        cache = KVCache.create(
            cfg.num_layers,
            batch,
            kernel_slots(capacity + extra),
            cfg.num_kv_heads,
            cfg.head_dim,
            self.net.dtype,
        )
        return DraftModelState(cache=cache)

    def prefill(self, state, inputs: PrefillInputs):
        out = self.net.module().prefill(inputs.prompt, inputs.prompt_lens, state.cache)
        return DraftModelState(cache=out.cache)

    def expander(self, ctx, policy):
        return _DraftModelExpander(self, ctx, self.catch_up_width(policy))


@dataclasses.dataclass(frozen=True)
class _DraftModelExpander:
    drafter: DraftModel
    ctx: DraftContext
    width: int  # W: catch-up block width

    def root(self, state):
        module = self.drafter.net.module()
        cache = state.cache
        batch = cache.lengths.shape[0]
        slots = cache.lengths[:, None] + jnp.arange(self.width)  # [B, W]
        count = self.ctx.hist_len - cache.lengths  # [B] tokens to absorb, root last (1..W)
        tokens = jnp.take_along_axis(
            self.ctx.history, jnp.minimum(slots, self.ctx.history.shape[1] - 1), axis=1
        )
        region = Region.causal(batch, self.width)
        live = jnp.arange(self.width)[None, None, :] < count[:, None, None]  # [B, 1, W]
        out = module(tokens, slots, cache, region.masked(live))
        root_hidden = jnp.take_along_axis(out.hidden, (count - 1)[:, None, None], axis=1)[:, 0]
        # Commit everything but the root: the root sits at region slot 0, like the target's.
        return module.logits(root_hidden), DraftModelState(cache=out.cache.advance(count - 1))

    def expand(self, state, tree, frontier):
        module = self.drafter.net.module()
        cache = state.cache
        tokens = jnp.take_along_axis(tree.tokens, frontier, axis=1)  # [B, F]
        depths = jnp.take_along_axis(tree.depths, frontier, axis=1)  # [B, F]
        mask = jnp.take_along_axis(tree.ancestor_mask(), frontier[:, :, None], axis=1)  # [B, F, T]
        out = module(
            tokens, cache.lengths[:, None] + depths, cache, Region(offsets=frontier, mask=mask)
        )
        return module.logits(out.hidden), DraftModelState(cache=out.cache)
