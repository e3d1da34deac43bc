"""Early-exit self-speculation (LayerSkip): the target drafts with its own first E layers.

Each tree node the policy expands runs target layers [0, E) with the target's own cache (its K/V
go into the tree region, node i at region slot i, exactly where the verify forward puts it), then
the shared final norm + LM head give the draft logits. The residual stream after layer E of every
expanded node is handed to the verify forward (`VerifyReuse`), which runs layers [0, E) only for
the nodes the draft never ran (the leaves) and layers [E, L) for the whole tree.

Works on any checkpoint; acceptance is much higher after early-exit training (LayerSkip recipe).
"""

import dataclasses

import jax
import jax.numpy as jnp

from specdec.cache import Cache, Region
from specdec.contract import DraftContext, Drafter, DraftHandoff, Policy, VerifyReuse
from trees.static import Chain


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EarlyExitStep:
    """What the expander threads during one step (EarlyExit keeps no state across steps)."""

    cache: Cache  # the target cache, tree region being written for layers [0, E)
    hidden: jax.Array  # [B, T, D] residual stream after layer E of each expanded node
    computed: jax.Array  # [B, T] bool: node ran through layers [0, E)
    pending: int = dataclasses.field(metadata=dict(static=True))  # U: the policy's max leaves


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EarlyExit(Drafter):
    """Draft with target layers [0, exit_layer) + the final norm + LM head (no extra weights)."""

    exit_layer: int = dataclasses.field(metadata=dict(static=True))
    #: reuse the draft's layers [0, E) in the verify forward (False: verify recomputes everything)
    reuse: bool = dataclasses.field(default=True, metadata=dict(static=True))

    supported_children = frozenset({"top", "sample", "sample_without_replacement"})

    def __post_init__(self):
        if isinstance(self.exit_layer, bool) or not isinstance(self.exit_layer, int):
            raise ValueError(f"exit_layer must be an integer >= 1, got {self.exit_layer!r}")
        if self.exit_layer < 1:
            raise ValueError(f"exit_layer must be >= 1, got {self.exit_layer}")

    @property
    def vocab_size(self) -> None:
        # The target's own LM head: the vocabulary is shared by construction.
        return None

    def default_policy(self) -> Policy:
        return Chain(4)

    def draft_cost(self, target_config) -> float:
        """E / L: a draft level runs the first E of the target's L layers."""
        return self.exit_layer / target_config.num_layers

    def check(self, target_config, target_tokenizer, policy):
        super().check(target_config, target_tokenizer, policy)
        if self.reuse and policy.renumbers_nodes:
            raise ValueError(
                f"EarlyExit(reuse=True) keeps its layers' work by tree node index, which "
                f"{type(policy).__name__} renumbers; use EarlyExit({self.exit_layer}, reuse=False)"
            )
        if self.exit_layer >= target_config.num_layers:
            raise ValueError(
                f"exit_layer {self.exit_layer} must be below the target's "
                f"{target_config.num_layers} layers"
            )

    def init_state(self, batch, capacity, policy):
        return ()

    def begin_step(self, state, ctx: DraftContext, policy: Policy) -> EarlyExitStep:
        batch, nodes = ctx.hist_len.shape[0], policy.draft_nodes
        width = ctx.target.config.hidden_size
        return EarlyExitStep(
            cache=ctx.cache,
            hidden=jnp.zeros((batch, nodes, width), ctx.target.dtype),
            computed=jnp.zeros((batch, nodes), bool),
            pending=policy.max_leaves,
        )

    def expander(self, ctx, policy):
        return _EarlyExitExpander(self, ctx)

    def end_step(self, step: EarlyExitStep, ctx) -> DraftHandoff:
        if not self.reuse:
            # The draft's K/V in the tree region are overwritten by the verify forward.
            return DraftHandoff(state=(), cache=step.cache, reuse=None)
        reuse = VerifyReuse(
            hidden=step.hidden, computed=step.computed, layer=self.exit_layer, pending=step.pending
        )
        return DraftHandoff(state=(), cache=step.cache, reuse=reuse)


@dataclasses.dataclass(frozen=True)
class _EarlyExitExpander:
    drafter: EarlyExit
    ctx: DraftContext

    def _run(self, step: EarlyExitStep, tokens, nodes, depths, mask):
        """Layers [0, E) for nodes [B, F] (tokens, depths [B, F], mask [B, F, T]) -> logits."""
        module = self.ctx.target.module()
        lengths = step.cache.lengths
        x = module.embed_tokens(tokens)  # [B, F, D]
        x, cache, _ = module.run_layers(
            x,
            lengths[:, None] + depths,
            step.cache,
            Region(offsets=nodes, mask=mask),
            stop=self.drafter.exit_layer,
        )
        rows = jnp.arange(tokens.shape[0])[:, None]
        step = dataclasses.replace(
            step,
            cache=cache,
            hidden=step.hidden.at[rows, nodes].set(x.astype(step.hidden.dtype)),
            computed=step.computed.at[rows, nodes].set(True),
        )
        return module.logits(module.norm(x)), step  # [B, F, V]

    def root(self, step):
        batch = self.ctx.hist_len.shape[0]
        root = jnp.take_along_axis(self.ctx.history, (self.ctx.hist_len - 1)[:, None], axis=1)
        nodes = jnp.zeros((batch, 1), jnp.int32)
        mask = jnp.zeros((batch, 1, step.hidden.shape[1]), bool).at[:, 0, 0].set(True)
        logits, step = self._run(step, root, nodes, nodes, mask)
        return logits[:, 0], step

    def expand(self, step, tree, frontier):
        tokens = jnp.take_along_axis(tree.tokens, frontier, axis=1)  # [B, F]
        depths = jnp.take_along_axis(tree.depths, frontier, axis=1)  # [B, F]
        mask = jnp.take_along_axis(tree.ancestor_mask(), frontier[:, :, None], axis=1)  # [B,F,T]
        return self._run(step, tokens, frontier, depths, mask)
