"""SpecExec (Svirschevski et al. 2024): big deterministic trees grown best-first.

A node's score is the cumulative draft log-probability of its root path (log q under the
request's sampling parameters; temperature-1 log-softmax when greedy, where q is one-hot). The
tree grows in rounds, per row and in fixed shapes:

1. A pool holds candidates (score, token, parent node, depth) that are not nodes yet; the root's
   `max_branch_width` best children start it.
2. Each round moves the pool's `max_beams` best candidates (fewer in the first rounds, while the
   pool cannot hold that many) into the tree as nodes (appended: node indices only grow, so the
   order is topological and a node's siblings come in the order they were scored), expands them
   in ONE drafter forward, and puts each one's `max_branch_width` best children (scored
   parent + log q(x | parent)) back into the pool.
3. A last round fills the remaining slots without expanding them.

A child never scores above its parent, so with max_beams = 1 this is exact best-first search: the
tree is the `budget - 1` highest-scoring prefixes (restricted to `max_branch_width` children per
node); larger max_beams trades that exactness of the greedy growth for fewer drafter forwards. The
pool keeps at most budget - 1 candidates: a candidate ranked below that can never be inserted.

Children are ranked candidates, verified as point masses (exact at every temperature, whatever
the candidates): no draft_probs are kept, so memory is O(budget) per row plus one round's
[max_beams, V] logits, never nodes x vocabulary. Node i of the returned tree is the node the
expander computed at index i (`renumbers_nodes` is False), so self-drafters may hand their work to
the verify forward.
"""

import dataclasses
import itertools

import jax
import jax.numpy as jnp

from specdec.contract import Policy
from specdec.sampling import probabilities
from specdec.tree import ChildKind, DraftTree


@dataclasses.dataclass(frozen=True)
class SpecExec(Policy):
    """Best-first deterministic trees of `budget` nodes (root included)."""

    budget: int = 256  # nodes, root included (the verify forward's width)
    max_beams: int = 32  # nodes inserted, and expanded together, per drafter forward
    max_branch_width: int = 16  # children proposed per expanded node
    depth: int = 32  # deepest node allowed (bounds drafter catch-up blocks)
    children: str = "top"

    def __post_init__(self):
        for name in ("budget", "max_beams", "max_branch_width", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SpecExec {name} must be an integer >= 1, got {value!r}")
        if self.budget < 2:
            raise ValueError(f"SpecExec budget must be >= 2 (root included), got {self.budget}")
        if self.children != "top":
            raise ValueError(
                f"SpecExec trees take ranked children only (children='top'), got "
                f"children={self.children!r}"
            )

    @property
    def rounds(self) -> tuple[int, ...]:
        """Nodes inserted per round; all rounds but the last are expanded.

        A round inserts max_beams nodes once the pool can hold that many: the root offers only
        max_branch_width candidates, and each expanded node adds max_branch_width - 1 more, so
        the first rounds ramp up instead of filling slots with nothing.
        """
        sizes, available, left = [], self.max_branch_width, self.budget - 1
        while left > 0:
            size = min(self.max_beams, available, left)
            sizes.append(size)
            left -= size
            available += size * (self.max_branch_width - 1)
        return tuple(sizes)

    @property
    def max_nodes(self) -> int:
        return self.budget

    @property
    def max_depth(self) -> int:
        return min(self.depth, self.budget - 1)

    @property
    def max_leaves(self) -> int:
        return self.rounds[-1]  # nodes never expanded: the final round's

    def check(self, vocab_size: int) -> None:
        if self.max_branch_width > vocab_size:
            raise ValueError(
                f"SpecExec max_branch_width={self.max_branch_width} exceeds the vocabulary's "
                f"{vocab_size} tokens"
            )

    def build(self, expander, state, root, params, key, policy_state=()):
        batch, nodes = root.shape[0], self.budget
        pool_size = nodes - 1
        greedy = params.temperature <= 0

        def children(logits, score, depth):
            """Top max_branch_width children of nodes (logits [B, F, V], score/depth [B, F])."""
            q = probabilities(logits, params)
            logq = jnp.where(q > 0, jnp.log(jnp.where(q > 0, q, 1.0)), -jnp.inf)
            logq = jnp.where(greedy, jax.nn.log_softmax(logits.astype(jnp.float32)), logq)
            step, token = jax.lax.top_k(logq, self.max_branch_width)  # [B, F, C]
            child = score[..., None] + step
            child = jnp.where((depth < self.max_depth)[..., None], child, -jnp.inf)
            child_depth = jnp.broadcast_to(depth[..., None] + 1, token.shape)
            flat = lambda x: x.reshape(batch, -1)
            return flat(child), flat(token.astype(jnp.int32)), flat(child_depth)

        def merge(pool, new, parent_nodes):
            """Pool [B, P] fields + a round's children; keep the best P (sorted descending)."""
            score, token, depth = new
            parent = jnp.repeat(parent_nodes, self.max_branch_width, axis=1)  # [B, F * C]
            both = [
                jnp.concatenate([a, b], axis=1)
                for a, b in zip(pool, (score, token, parent, depth), strict=True)
            ]
            # lax.top_k puts the lower index first among equals: older candidates win ties.
            best, order = jax.lax.top_k(both[0], pool_size)
            take = lambda x: jnp.take_along_axis(x, order, axis=1)
            return (best, take(both[1]), take(both[2]), take(both[3]))

        def insert(tree, pool, start, count):
            """Move the pool's `count` best candidates to nodes start..start+count-1."""
            score, token, parent, depth = (x[:, :count] for x in pool)
            at = lambda x, v: jax.lax.dynamic_update_slice(x, v, (0, start))
            tree = dataclasses.replace(
                tree,
                tokens=at(tree.tokens, token),
                parents=at(tree.parents, parent),
                depths=at(tree.depths, depth),
                valid=at(tree.valid, jnp.isfinite(score)),
            )
            fill = (-jnp.inf, 0, 0, 0)
            rest = tuple(
                jnp.concatenate([x[:, count:], jnp.full((batch, count), f, x.dtype)], axis=1)
                for x, f in zip(pool, fill, strict=True)
            )
            return tree, rest, score, depth

        tree = DraftTree(
            tokens=jnp.zeros((batch, nodes), jnp.int32).at[:, 0].set(root),
            parents=jnp.full((batch, nodes), -1, jnp.int32),
            depths=jnp.zeros((batch, nodes), jnp.int32),
            valid=jnp.zeros((batch, nodes), bool).at[:, 0].set(True),
            child_kind=jnp.full((batch, nodes), ChildKind.DETERMINISTIC, jnp.int32),
            draft_probs=None,
        )
        empty = (
            jnp.full((batch, pool_size), -jnp.inf, jnp.float32),
            jnp.zeros((batch, pool_size), jnp.int32),
            jnp.zeros((batch, pool_size), jnp.int32),
            jnp.zeros((batch, pool_size), jnp.int32),
        )
        logits, state = expander.root(state)  # [B, V]
        zeros = jnp.zeros((batch, 1), jnp.int32)
        pool = merge(empty, children(logits[:, None], zeros.astype(jnp.float32), zeros), zeros)

        def grow(start, size, carry):
            """One round: insert `size` nodes at start.., expand them, pool their children."""
            tree, pool, state = carry
            tree, pool, score, depth = insert(tree, pool, start, size)
            frontier = jnp.broadcast_to(start + jnp.arange(size, dtype=jnp.int32), (batch, size))
            logits, state = expander.expand(state, tree, frontier)  # [B, size, V]
            pool = merge(pool, children(logits, score, depth), frontier)
            return tree, pool, state

        # Expanded rounds, grouped into runs of equal size (one fori_loop per run).
        carry, start, sizes = (tree, pool, state), 1, self.rounds
        for size, run in itertools.groupby(sizes[:-1]):
            count = len(list(run))
            body = lambda r, c, start=start, size=size: grow(start + r * size, size, c)
            carry = jax.lax.fori_loop(0, count, body, carry) if count > 1 else body(0, carry)
            start += count * size
        tree, pool, state = carry
        tree, _, _, _ = insert(tree, pool, start, sizes[-1])
        return tree, state
