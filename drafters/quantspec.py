"""QuantSpec self-speculation: the target drafts for itself, reading only the upper (INT4) plane of
its hierarchical quantised KV cache (specdec.quant_cache).

Each tree node the policy expands runs the whole target with the cache's INT4 view: its K/V go into
the tree region (node i at region slot i, full precision, where the verify forward then overwrites
them with the target's own), and the final norm + LM head give the draft logits. The verify forward
reads both planes (about INT8), so with `generate(..., kv_cache="int8-hierarchical")` the output
follows plain decoding's law in that cache mode: its distribution at T > 0, and its greedy tokens up
to the floating-point reassociation the quantiser amplifies (a K/V value computed in a block of
several tokens may differ in its last bit from plain decoding's and round to the next level; see
tests/test_quantspec.py). No extra weights; the draft reads a quarter of the bf16 cache's bytes for
the quantised part of the context. `QuantSpec.with_int4_weights(model)` also drafts with 4-bit
copies of the target's projection weights (QuantSpec's group-128 weights, specdec.quant_weights):
a quarter of the weight bytes per draft forward for 0.28x more weight memory; the verify forward
keeps the target's own weights, so the output law is unchanged.
"""

import dataclasses

import jax
import jax.numpy as jnp

from specdec import quant_weights
from specdec.cache import Region
from specdec.contract import DraftContext, Drafter, DraftHandoff, Policy
from specdec.quant_cache import QuantCache
from specdec.quant_weights import QuantWeight
from trees.static import Chain

#: QuantSpec's draft length (PRIOR_ART.md)
DEFAULT_DRAFT_LENGTH = 5


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantSpec(Drafter):
    """Draft with the target's own weights over the INT4 (upper-plane) view of its cache."""

    #: 4-bit copies of the target's projection weights for the draft ({path: QuantWeight}, see
    #: specdec.quant_weights.quantize_model), or None: the target's own weights
    weights: dict[str, QuantWeight] | None = None

    supported_children = frozenset({"top", "sample", "sample_without_replacement"})

    #: generate refuses this drafter without kv_cache="int8-hierarchical"
    needs_quantized_cache = True

    @classmethod
    def with_int4_weights(cls, model, group: int = quant_weights.DEFAULT_GROUP) -> "QuantSpec":
        """A QuantSpec drafting with `model`'s projection weights (and untied LM head) in 4 bits,
        groups of `group` input features (QuantSpec's draft weights)."""
        return cls(weights=quant_weights.quantize_model(model.net.module(), group))

    @property
    def vocab_size(self) -> None:
        # The target's own LM head: the vocabulary is shared by construction.
        return None

    def default_policy(self) -> Policy:
        return Chain(DEFAULT_DRAFT_LENGTH)

    def check(self, target_config, target_tokenizer, policy):
        super().check(target_config, target_tokenizer, policy)
        if self.weights:
            quant_weights.check_weights(self.weights, target_config)

    def init_state(self, batch, capacity, policy):
        return ()

    def begin_step(self, state, ctx: DraftContext, policy: Policy) -> QuantCache:
        if not isinstance(ctx.cache, QuantCache):
            raise ValueError(
                f"QuantSpec needs the quantised target cache, got {type(ctx.cache).__name__}: "
                f"pass kv_cache='int8-hierarchical' to generate"
            )
        return ctx.cache.with_view("int4")

    def expander(self, ctx, policy):
        return _QuantSpecExpander(ctx, self.weights)

    def end_step(self, cache: QuantCache, ctx) -> DraftHandoff:
        # The draft's K/V in the tree region are overwritten by the verify forward.
        return DraftHandoff(state=(), cache=cache.with_view("int8"), reuse=None)


@dataclasses.dataclass(frozen=True)
class _QuantSpecExpander:
    ctx: DraftContext
    weights: dict[str, QuantWeight] | None

    def _run(self, cache: QuantCache, tokens, nodes, depths, mask):
        """All target layers for nodes [B, F] (tokens, depths [B, F], mask [B, F, R]) -> logits."""
        module = self.ctx.target.module()
        if self.weights:  # the draft's 4-bit weights in place of the target's
            module = quant_weights.with_weights(module, self.weights)
        x = module.embed_tokens(tokens)  # [B, F, D]
        positions = cache.lengths[:, None] + depths  # [B, F]
        x, cache, _ = module.run_layers(x, positions, cache, Region(offsets=nodes, mask=mask))
        return module.logits(module.norm(x)), cache  # [B, F, V]

    def root(self, cache: QuantCache):
        batch = self.ctx.hist_len.shape[0]
        root = jnp.take_along_axis(self.ctx.history, (self.ctx.hist_len - 1)[:, None], axis=1)
        nodes = jnp.zeros((batch, 1), jnp.int32)
        mask = jnp.ones((batch, 1, 1), bool)  # [B, 1, 1]: the root sees itself (region slot 0)
        logits, cache = self._run(cache, root, nodes, nodes, mask)
        return logits[:, 0], cache

    def expand(self, cache: QuantCache, tree, frontier):
        tokens = jnp.take_along_axis(tree.tokens, frontier, axis=1)  # [B, F]
        depths = jnp.take_along_axis(tree.depths, frontier, axis=1)  # [B, F]
        mask = jnp.take_along_axis(tree.ancestor_mask(), frontier[:, :, None], axis=1)  # [B,F,T]
        return self._run(cache, tokens, frontier, depths, mask)
