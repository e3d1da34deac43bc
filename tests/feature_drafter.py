"""A drafter for tests that reads target features: the smallest honest user of the contract.

Its draft logits after a node are a fixed random projection of the target's feature of the last
committed token (which tap: the final hidden state or a requested layer's output) plus a fixed
random table indexed by the node's own token. It learns nothing; it exists to prove that target
features reach drafters at prefill and after every verification, and that drafters using them
stay lossless.
"""

import dataclasses

import jax
import jax.numpy as jnp

from specdec.contract import Drafter, PrefillInputs, StepOutcome
from trees import Chain


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FeatureProjection(Drafter):
    projection: jax.Array  # [D, V]
    table: jax.Array  # [V, V]
    target_layers: tuple[int, ...] = dataclasses.field(default=(), metadata=dict(static=True))

    supported_children = frozenset({"top", "sample", "sample_without_replacement"})

    @staticmethod
    def random(width: int, vocab: int, seed: int = 0, layers=(), scale: float = 1.0):
        k1, k2 = jax.random.split(jax.random.key(seed))
        return FeatureProjection(
            projection=jax.random.normal(k1, (width, vocab)) * scale,
            table=jax.random.normal(k2, (vocab, vocab)) * scale,
            target_layers=tuple(layers),
        )

    @property
    def vocab_size(self):
        return self.table.shape[0]

    def default_policy(self):
        return Chain(3)

    def init_state(self, batch, capacity, policy):
        return jnp.zeros((batch, self.projection.shape[0]), jnp.float32)  # [B, D]

    def _feature(self, features):
        return features.layers[-1] if self.target_layers else features.hidden  # [B, T, D]

    def prefill(self, state, inputs: PrefillInputs):
        last = (inputs.prompt_lens - 1)[:, None, None]
        return jnp.take_along_axis(self._feature(inputs.features), last, axis=1)[:, 0]

    def observe(self, state, ctx, outcome: StepOutcome):
        node = jnp.take_along_axis(
            outcome.verdict.path, jnp.maximum(outcome.committed - 1, 0)[:, None], axis=1
        )  # [B, 1]: the last committed path node
        new = jnp.take_along_axis(self._feature(outcome.features), node[:, :, None], axis=1)[:, 0]
        return jnp.where((outcome.committed > 0)[:, None], new.astype(state.dtype), state)

    def expander(self, ctx, policy):
        return _Expander(self, ctx)


@dataclasses.dataclass(frozen=True)
class _Expander:
    drafter: FeatureProjection
    ctx: object

    def root(self, state):
        root = jnp.take_along_axis(self.ctx.history, (self.ctx.hist_len - 1)[:, None], axis=1)
        return state @ self.drafter.projection + self.drafter.table[root[:, 0]], state

    def expand(self, state, tree, frontier):
        tokens = jnp.take_along_axis(tree.tokens, frontier, axis=1)  # [B, F]
        base = state @ self.drafter.projection  # [B, V]
        return base[:, None, :] + self.drafter.table[tokens], state
