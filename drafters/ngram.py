"""Prompt-lookup (n-gram) drafting: propose what followed earlier occurrences of the current suffix.

For a node, the context is the sequence's history followed by the node's root-to-node path. The
drafter looks for earlier occurrences of the context's last n tokens (n = max_ngram, backing off to
min_ngram) in the history and scores each continuation token by how often (and, mildly, how
recently) it followed. Its "logits" are log-scores (-inf for tokens never seen), so ranked children
are the most frequent continuations and a node with no match gets no children. The scores are not a
model distribution, so this drafter only serves deterministic (children="top") policies.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from specdec.contract import DraftContext, Drafter, Policy
from trees.static import Chain

# Weight of recency among equally frequent continuations: the newest match counts 1 + this.
_RECENCY_BONUS = 0.5


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NGram(Drafter):
    """Prompt lookup decoding (PLD); needs no weights and keeps no state."""

    max_ngram: int = dataclasses.field(default=3, metadata=dict(static=True))
    min_ngram: int = dataclasses.field(default=1, metadata=dict(static=True))

    supported_children = frozenset({"top"})

    def __post_init__(self):
        for name in ("max_ngram", "min_ngram"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"NGram {name} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(
                f"need 1 <= min_ngram <= max_ngram, got {self.min_ngram=} {self.max_ngram=}"
            )

    @property
    def vocab_size(self) -> None:
        # Lookup proposes tokens from the sequence itself: any vocabulary is shared by construction.
        return None

    def default_policy(self) -> Policy:
        return Chain(4)

    def draft_cost(self, target_config) -> float:
        """A lookup in the history: no forward."""
        return 0.0

    def init_state(self, batch, capacity, policy):
        return ()

    def expander(self, ctx, policy):
        return _NGramExpander(self, ctx)


@dataclasses.dataclass(frozen=True)
class _NGramExpander:
    drafter: NGram
    ctx: DraftContext

    def root(self, state):
        # The root's context is the history itself: a depth-0 "path" of just the root.
        history, hist_len = self.ctx.history, self.ctx.hist_len
        root = jnp.take_along_axis(history, (hist_len - 1)[:, None], axis=1)  # [B, 1]
        tails = self._history_tail(jnp.zeros_like(root), root[:, :, None])
        return self._scores(tails)[:, 0], state

    def expand(self, state, tree, frontier):
        anc = jnp.take_along_axis(tree.ancestor_mask(), frontier[:, :, None], axis=1)  # [B, F, T]
        depth_of = jnp.take_along_axis(tree.depths, frontier, axis=1)  # [B, F]
        # path[b, f, e] = token of the frontier node's ancestor at depth e (e = 0 is the root)
        max_depth = tree.num_nodes
        at_depth = tree.depths[:, None, None, :] == jnp.arange(max_depth)[None, None, :, None]
        path = jnp.sum(
            jnp.where(anc[:, :, None, :] & at_depth, tree.tokens[:, None, None, :], 0), axis=-1
        )  # [B, F, T]
        return self._scores(self._history_tail(depth_of, path)), state

    def _history_tail(self, depth: jax.Array, path: jax.Array) -> jax.Array:
        """tails [B, F, n]: the last n tokens of history[:-1] ++ path[0..depth], newest first."""
        n = self.drafter.max_ngram
        history, hist_len = self.ctx.history, self.ctx.hist_len
        k = jnp.arange(n)[None, None, :]  # [1, 1, n]
        from_path = jnp.take_along_axis(
            path, jnp.clip(depth[:, :, None] - k, 0, path.shape[-1] - 1), axis=2
        )
        hist_idx = hist_len[:, None, None] - 1 - (k - depth[:, :, None])  # [B, F, n]
        from_hist = jnp.take_along_axis(
            history[:, None, :].repeat(depth.shape[1], 1),
            jnp.clip(hist_idx, 0, history.shape[1] - 1),
            axis=2,
        )
        tail = jnp.where(k <= depth[:, :, None], from_path, from_hist)
        return jnp.where(hist_idx >= 0, tail, -1)  # -1 (never matches) before the sequence start

    def _scores(self, tails: jax.Array) -> jax.Array:
        """log-scores [B, F, V] of continuation tokens for each tail [B, F, n]."""
        history, hist_len = self.ctx.history, self.ctx.hist_len
        length = history.shape[1]
        vocab = self.ctx.vocab_size
        pos = jnp.arange(length)  # candidate match end i; continuation at i + 1
        has_next = pos[None, :] + 1 < hist_len[:, None]  # [B, Lh]
        # equal[b, f, k, i]: history[i - k] == tail[k]
        shifted = jnp.stack(
            [jnp.roll(history, k, axis=1) for k in range(self.drafter.max_ngram)], axis=1
        )  # [B, n, Lh], shifted[:, k, i] = history[i - k]
        in_range = pos[None, :] - jnp.arange(self.drafter.max_ngram)[:, None] >= 0  # [n, Lh]
        equal = (shifted[:, None] == tails[..., None]) & in_range[None, None]  # [B, F, n, Lh]
        matches_n = jnp.cumprod(equal, axis=2).astype(bool)  # [B, F, n, Lh]: first n+1 tokens match
        weights = 1.0 + _RECENCY_BONUS * pos / length
        cont = jnp.roll(history, -1, axis=1)  # cont[:, i] = history[i + 1]
        scores = jnp.full((*tails.shape[:2], vocab), -jnp.inf, jnp.float32)
        # Back off from the longest n-gram to the shortest: keep the longest that matched anywhere.
        for n in range(self.drafter.min_ngram, self.drafter.max_ngram + 1):
            hit = matches_n[:, :, n - 1] & has_next[:, None, :]  # [B, F, Lh]
            counts = jnp.zeros((*tails.shape[:2], vocab), jnp.float32)
            counts = jax.vmap(
                jax.vmap(
                    lambda c, h, t: c.at[t].add(jnp.where(h, weights, 0.0)), in_axes=(0, 0, None)
                )
            )(counts, hit, cont)
            found = jnp.any(hit, axis=-1, keepdims=True)
            scores = jnp.where(found, jnp.where(counts > 0, jnp.log(counts), -jnp.inf), scores)
        return scores
