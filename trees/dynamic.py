"""EAGLE-2's dynamic draft tree: grow the most probable frontier, keep the most probable nodes.

Per sequence (rows of a batch get different trees), with fixed shapes throughout:

1. The root's top_k children are the level-1 candidates and the first frontier.
2. For levels 2..depth, every frontier node proposes its top_k children, scored by cumulative
   draft log-probability (log-softmax of the draft logits at temperature 1, whatever the sampling
   parameters); the next frontier is the best top_k of those top_k^2 candidates.
3. The best total_tokens - 1 candidates over all levels (top_k + (depth-1) top_k^2 of them) become
   the tree. A child's score is its parent's plus a log-probability <= 0, so a parent scores at
   least as high as its children; on ties the shallower (earlier) candidate wins, so every kept
   candidate's ancestors are kept too.

Children are ranked candidates, verified as point masses (exact at every temperature).

The expander grows a *working* tree (the root and top_k frontier nodes per level); the returned
tree numbers nodes differently (`renumbers_nodes`). Drafters that keep per-node work only in
their own state (EAGLE, DraftModel) are unaffected; a self-drafter's `VerifyReuse` assumes node i
of the returned tree is the node it computed at index i, so `EarlyExit(reuse=True)` refuses this
policy (`reuse=False` is lossless with it).
"""

import dataclasses

import jax
import jax.numpy as jnp

from specdec.contract import Policy
from specdec.tree import ChildKind, DraftTree


@dataclasses.dataclass(frozen=True)
class Dynamic(Policy):
    """EAGLE-2 dynamic trees (defaults as in EAGLE-2: depth 7, top_k 10, total_tokens 60)."""

    depth: int = 7  # levels below the root (one drafter forward each)
    top_k: int = 10  # children proposed per frontier node, and frontier width
    total_tokens: int = 60  # nodes kept, root included
    children: str = "top"
    renumbers_nodes = True  # the kept nodes are renumbered from the working tree

    def __post_init__(self):
        for name in ("depth", "top_k", "total_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Dynamic {name} must be an integer >= 1, got {value!r}")
        if self.children != "top":
            raise ValueError(
                f"Dynamic trees take ranked children only (children='top'), got "
                f"children={self.children!r}: sampled children are not implemented for EAGLE-2 "
                "trees, whose exactness rests on verifying candidates as point masses"
            )
        if not 2 <= self.total_tokens <= 1 + self.num_candidates:
            raise ValueError(
                f"total_tokens={self.total_tokens} must be in [2, {1 + self.num_candidates}] "
                f"(the root plus at most the {self.num_candidates} candidates of depth="
                f"{self.depth}, top_k={self.top_k})"
            )

    @property
    def num_candidates(self) -> int:
        """C: candidates scored over all levels."""
        return self.top_k + (self.depth - 1) * self.top_k**2

    @property
    def working_nodes(self) -> int:
        """Nodes of the tree the expander grows: the root and top_k frontier nodes per level."""
        return 1 + (self.depth - 1) * self.top_k

    @property
    def max_nodes(self) -> int:
        return self.total_tokens  # the verified tree

    @property
    def draft_nodes(self) -> int:
        # The expander writes its per-node buffers at working-tree indices (EAGLE-2's defaults:
        # 61 working nodes for a 60-node tree; depth 7, top_k 4: 25 for total_tokens 8).
        return max(self.total_tokens, self.working_nodes)

    @property
    def max_depth(self) -> int:
        # A kept node's ancestors score higher and are kept too, so the verified tree of
        # total_tokens nodes is at most total_tokens - 1 deep, whatever `depth` drafts.
        return min(self.depth, self.total_tokens - 1)

    def check(self, vocab_size: int) -> None:
        if self.top_k > vocab_size:
            raise ValueError(
                f"Dynamic top_k={self.top_k} exceeds the vocabulary's {vocab_size} tokens"
            )

    def build(self, expander, state, root, params, key, policy_state=()):
        batch, k, nodes = root.shape[0], self.top_k, self.draft_nodes
        rows = jnp.arange(batch)[:, None]
        work = DraftTree(
            tokens=jnp.zeros((batch, nodes), jnp.int32).at[:, 0].set(root),
            parents=jnp.full((batch, nodes), -1, jnp.int32),
            depths=jnp.zeros((batch, nodes), jnp.int32),
            valid=jnp.zeros((batch, nodes), bool).at[:, 0].set(True),
            child_kind=jnp.full((batch, nodes), ChildKind.DETERMINISTIC, jnp.int32),
            draft_probs=None,
        )

        # Level 1: the root's children (candidates 0..k-1 are also the first frontier).
        logits, state = expander.root(state)  # [B, V]
        scores, tokens = jax.lax.top_k(jax.nn.log_softmax(logits.astype(jnp.float32)), k)
        cand_scores, cand_tokens = [scores], [tokens.astype(jnp.int32)]  # each [B, n_level]
        cand_parents = [jnp.full((batch, k), -1, jnp.int32)]  # parent candidate (-1: the root)
        cand_levels = [jnp.full((batch, k), 1, jnp.int32)]
        front_cand = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (batch, k))  # [B, k]
        front_work = 1 + jnp.arange(k, dtype=jnp.int32)  # working-tree index of the frontier
        work = self._place(work, 1, tokens, jnp.zeros((batch, k), jnp.int32), 1, scores)
        base = k  # candidate index of the level's first candidate

        for level in range(2, self.depth + 1):
            frontier = jnp.broadcast_to(front_work, (batch, k))
            logits, state = expander.expand(state, work, frontier)  # [B, k, V]
            logp, toks = jax.lax.top_k(jax.nn.log_softmax(logits.astype(jnp.float32)), k)
            level_scores = (scores[:, :, None] + logp).reshape(batch, k * k)  # [B, k*k] (f, r)
            level_tokens = toks.reshape(batch, k * k).astype(jnp.int32)
            level_parents = jnp.repeat(front_cand, k, axis=1)  # [B, k*k]
            cand_scores.append(level_scores)
            cand_tokens.append(level_tokens)
            cand_parents.append(level_parents)
            cand_levels.append(jnp.full((batch, k * k), level, jnp.int32))
            if level < self.depth:
                # lax.top_k puts the lower index first among equal values.
                scores, best = jax.lax.top_k(level_scores, k)  # [B, k]
                parent_work = jnp.repeat(front_work, k)[best]  # [B, k]
                start = 1 + (level - 1) * k  # the level's frontier: working nodes start..+k-1
                front_work = start + jnp.arange(k, dtype=jnp.int32)
                work = self._place(
                    work, start, level_tokens[rows, best], parent_work, level, scores
                )
                front_cand = base + best.astype(jnp.int32)
            base += k * k

        return self._select(
            jnp.concatenate(cand_scores, axis=1),
            jnp.concatenate(cand_tokens, axis=1),
            jnp.concatenate(cand_parents, axis=1),
            jnp.concatenate(cand_levels, axis=1),
            root,
        ), state

    @staticmethod
    def _place(work, start: int, tokens, parents, level, scores):
        """Write one level's k frontier nodes [B, k] at working-tree indices start..start+k-1
        (a static slice: an in-place update, not a scatter)."""
        at = slice(start, start + tokens.shape[1])
        return dataclasses.replace(
            work,
            tokens=work.tokens.at[:, at].set(tokens),
            parents=work.parents.at[:, at].set(parents),
            depths=work.depths.at[:, at].set(level),
            valid=work.valid.at[:, at].set(jnp.isfinite(scores)),
        )

    def _select(self, scores, tokens, parents, levels, root):
        """The tree of the best total_tokens - 1 of candidates [B, C] (topological order)."""
        batch, num = scores.shape
        keep = self.total_tokens - 1
        rows = jnp.arange(batch)[:, None]
        # Stable: among equal scores the lower candidate index (a shallower level) comes first.
        best = jnp.argsort(-scores, axis=1, stable=True)[:, :keep]  # [B, n]
        # Candidates are stored by level, then frontier slot, then rank: ascending index is
        # topological with each node's siblings in rank order.
        chosen = jnp.sort(best, axis=1)  # [B, n]
        node_of = (
            jnp.full((batch, num), -1, jnp.int32)
            .at[rows, chosen]
            .set(1 + jnp.arange(keep, dtype=jnp.int32))
        )  # [B, C] node index of each kept candidate
        parent_cand = parents[rows, chosen]  # [B, n]
        parent_node = jnp.where(
            parent_cand < 0, 0, node_of[rows, jnp.maximum(parent_cand, 0)]
        )  # [B, n] (kept, by the ordering argument above)
        pad = self.max_nodes - 1 - keep
        padded = lambda x, fill: jnp.pad(x, ((0, 0), (1, pad)), constant_values=fill)
        valid = padded(jnp.isfinite(scores[rows, chosen]) & (parent_node >= 0), False)
        valid = valid.at[:, 0].set(True)
        return DraftTree(
            tokens=padded(tokens[rows, chosen], 0).at[:, 0].set(root),
            parents=padded(parent_node, -1).at[:, 0].set(-1),
            depths=padded(levels[rows, chosen], 0).at[:, 0].set(0),
            valid=valid,
            child_kind=jnp.full((batch, self.max_nodes), ChildKind.DETERMINISTIC, jnp.int32),
            draft_probs=None,
        )
