"""Fixed-shape tree policies: a `Topology` compiled once, grown level by level.

The policy interface itself (`Policy`, `Expander`) lives in `specdec.contract`. A policy never sees
model weights or caches. It talks to the drafter through an `Expander`:
`root(state)` gives the draft logits after the root, `expand(state, tree, frontier)` gives the draft
logits after each frontier node of the partial tree. Static shapes (Chain, Static) unroll their
levels; dynamic policies (EAGLE-2, Sequoia, RSD-S, SpecExec) pick frontiers from the logits they
have seen. Either way the result is a `DraftTree` whose `child_kind` tells the verifier the rule.
"""

import abc
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from specdec.contract import Policy
from specdec.sampling import probabilities, sample, sample_without_replacement
from specdec.tree import ChildKind, DraftTree


@dataclasses.dataclass(frozen=True)
class Topology:
    """A fixed tree shape compiled once into index buffers (numpy, static)."""

    parents: tuple[int, ...]  # [T] parent index, -1 for the root
    depths: tuple[int, ...]  # [T]
    ranks: tuple[int, ...]  # [T] which of its parent's candidates the node is (0 = best / first)

    @staticmethod
    def from_paths(paths: list[list[int]] | tuple) -> "Topology":
        """Compile Medusa / EAGLE-1 style root-to-node rank paths, e.g. [[0], [1], [0, 0]]."""
        clean = []
        for path in paths:
            if not isinstance(path, list | tuple) or not path:
                raise ValueError(f"each tree path must be a non-empty list of ranks, got {path!r}")
            if any(not isinstance(r, int) or isinstance(r, bool) or r < 0 for r in path):
                raise ValueError(f"tree path ranks must be integers >= 0, got {path!r}")
            clean.append(tuple(path))
        if len(set(clean)) != len(clean):
            dup = sorted({p for p in clean if clean.count(p) > 1})
            raise ValueError(f"tree paths must be distinct; repeated: {[list(p) for p in dup]}")
        present = set(clean)
        for path in clean:
            if len(path) > 1 and path[:-1] not in present:
                raise ValueError(f"tree path {list(path)} has no parent path {list(path[:-1])}")
            if path[-1] > 0 and (*path[:-1], path[-1] - 1) not in present:
                raise ValueError(
                    f"tree path {list(path)} needs its elder sibling "
                    f"{[*path[:-1], path[-1] - 1]} (ranks must be contiguous from 0)"
                )
        # Breadth-first, siblings by rank: parents come first, siblings in the order tried.
        ordered = sorted(clean, key=lambda p: (len(p), p))
        index = {(): 0}
        parents, depths, ranks = [-1], [0], [0]
        for path in ordered:
            index[path] = len(parents)
            parents.append(index[path[:-1]])
            depths.append(len(path))
            ranks.append(path[-1])
        return Topology(tuple(parents), tuple(depths), tuple(ranks))

    @property
    def num_nodes(self) -> int:
        return len(self.parents)

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    def children(self, node: int) -> list[int]:
        return [i for i, p in enumerate(self.parents) if p == node]

    def levels(self) -> list[np.ndarray]:
        """Per depth d = 0..max_depth-1: the nodes at depth d that have children (the frontier)."""
        return [
            np.array(
                [i for i, d in enumerate(self.depths) if d == depth and self.children(i)], np.int32
            )
            for depth in range(self.max_depth)
        ]


class StaticShapePolicy(Policy):
    """A policy whose tree shape is a fixed Topology; children chosen per `children` mode."""

    @property
    @abc.abstractmethod
    def topology(self) -> Topology: ...

    @property
    def max_nodes(self) -> int:
        return self.topology.num_nodes

    @property
    def max_depth(self) -> int:
        return self.topology.max_depth

    @property
    def max_leaves(self) -> int:
        return sum(1 for u in range(self.max_nodes) if not self.topology.children(u))

    @property
    def max_children(self) -> int:
        """Most children of any one node."""
        return max(len(self.topology.children(u)) for u in range(self.max_nodes))

    def check(self, vocab_size: int) -> None:
        # Distinct candidates per node (ranked or drawn without replacement) cannot outnumber the
        # vocabulary; i.i.d. draws can repeat, so "sample" serves any width.
        if self.child_kind != ChildKind.WITH_REPLACEMENT and self.max_children > vocab_size:
            raise ValueError(
                f"{type(self).__name__} gives a node {self.max_children} children with "
                f"children={self.children!r}, more distinct tokens than the vocabulary's "
                f"{vocab_size}; use a narrower tree or children='sample'"
            )

    def build(self, expander, state, root, params, key, policy_state=()):
        topo = self.topology
        batch, nodes = root.shape[0], topo.num_nodes
        broadcast = lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.int32), (batch, nodes))
        # At temperature 0 the target is one-hot, so sampled children would all be its argmax
        # duplicates; use ranked candidates instead (exact under the deterministic rule).
        greedy = params.temperature <= 0
        kind = jnp.where(greedy, ChildKind.DETERMINISTIC, self.child_kind).astype(jnp.int32)
        sampled = self.child_kind != ChildKind.DETERMINISTIC
        tree = DraftTree(
            tokens=jnp.zeros((batch, nodes), jnp.int32).at[:, 0].set(root),
            parents=broadcast(topo.parents),
            depths=broadcast(topo.depths),
            valid=jnp.ones((batch, nodes), bool),
            child_kind=jnp.broadcast_to(kind, (batch, nodes)),
            draft_probs=None,
        )
        draft_probs = None
        for depth, frontier in enumerate(topo.levels()):
            if depth == 0:
                logits, state = expander.root(state)
                logits = logits[:, None, :]  # [B, 1, V]
            else:
                frontier_b = jnp.broadcast_to(jnp.asarray(frontier), (batch, len(frontier)))
                logits, state = expander.expand(state, tree, frontier_b)  # [B, F, V]
            q = probabilities(logits, params)  # [B, F, V]
            if sampled:
                if draft_probs is None:
                    draft_probs = jnp.zeros((batch, nodes, logits.shape[-1]), jnp.float32)
                draft_probs = draft_probs.at[:, frontier].set(q)
            key, level_key = jax.random.split(key)
            tree = self._choose_children(tree, frontier, logits, q, greedy, level_key)
        valid = self._prune(tree.valid)
        return dataclasses.replace(tree, valid=valid, draft_probs=draft_probs), state

    def _prune(self, valid: jax.Array) -> jax.Array:
        """valid [B, T] with the descendants of invalid nodes invalid too: one update per depth
        (parents first), not one per node (a 1024-node tree would otherwise unroll into ~1000
        tiny GPU kernels)."""
        topo = self.topology
        parents, depths = np.asarray(topo.parents), np.asarray(topo.depths)
        for depth in range(1, topo.max_depth + 1):
            level = np.flatnonzero(depths == depth)  # [N_d]
            valid = valid.at[:, level].set(valid[:, level] & valid[:, parents[level]])
        return valid

    def _choose_children(self, tree, frontier, logits, q, greedy, key):
        topo = self.topology
        max_children = max(len(topo.children(int(u))) for u in frontier)
        # Ranked candidates: best draft logits first; a -inf logit means "no such candidate".
        # (i.i.d. "sample" trees may be wider than the vocabulary: ranks past V are absent.)
        ranked = min(max_children, logits.shape[-1])
        top_vals, top_tok = jax.lax.top_k(logits, ranked)  # [B, F, C']
        pad = ((0, 0), (0, 0), (0, max_children - ranked))
        top_ok = jnp.pad(top_vals > -jnp.inf, pad)  # [B, F, C]
        top_tok = jnp.pad(top_tok, pad)
        kind = self.child_kind
        if kind == ChildKind.WITH_REPLACEMENT:
            draws = sample(
                key, jnp.broadcast_to(q[:, :, None, :], (*q.shape[:2], max_children, *q.shape[2:]))
            )  # [B, F, C]
            draws_ok = jnp.ones_like(top_ok)
        elif kind == ChildKind.WITHOUT_REPLACEMENT:
            draws, draws_ok = sample_without_replacement(key, q, max_children)
        else:
            draws, draws_ok = top_tok, top_ok
        # Every child of the level at once: its parent's frontier slot and its rank there.
        kids = [(c, f) for f, parent in enumerate(frontier) for c in topo.children(int(parent))]
        child = np.array([c for c, _ in kids], np.int32)  # [C]
        slot = np.array([f for _, f in kids], np.int32)  # [C]
        rank = np.array([topo.ranks[c] for c, _ in kids], np.int32)  # [C]
        tok = jnp.where(greedy, top_tok[:, slot, rank], draws[:, slot, rank])  # [B, C]
        ok = jnp.where(greedy, top_ok[:, slot, rank], draws_ok[:, slot, rank])  # [B, C]
        return dataclasses.replace(
            tree, tokens=tree.tokens.at[:, child].set(tok), valid=tree.valid.at[:, child].set(ok)
        )
