"""The draft-tree type: fixed capacity, padded and masked, and self-describing for the verifier.

Node 0 is the root: the last emitted token, not yet in the target's cache. Nodes are stored in
topological order (parents[i] < i) and siblings in the order they were chosen, which is the order
the recursive verification rules try them. Every node records how its children were chosen
(`child_kind`), so the verifier applies the rule that is exact for that draft and never another.
"""

import dataclasses
import enum

import jax
import jax.numpy as jnp


class ChildKind(enum.IntEnum):
    """How a node's children were chosen; decides the exact acceptance rule for them."""

    DETERMINISTIC = 0  # ranked candidates (top-k, argmax, n-gram lookup): point masses
    WITH_REPLACEMENT = 1  # i.i.d. samples from q (SpecInfer multi-step speculative sampling)
    WITHOUT_REPLACEMENT = 2  # distinct samples from q (Gumbel-top-k, stochastic beam: RSD)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DraftTree:
    """A batch of draft trees, T nodes each (node 0 = root)."""

    tokens: jax.Array  # [B, T] int32
    parents: jax.Array  # [B, T] int32, -1 for the root (and for padding)
    depths: jax.Array  # [B, T] int32, root 0
    valid: jax.Array  # [B, T] bool, False for padding and pruned nodes
    child_kind: jax.Array  # [B, T] int32 ChildKind of each node's children
    draft_probs: jax.Array | None  # [B, T, V] float32 q each node's children were drawn from

    @property
    def num_nodes(self) -> int:
        """T: node capacity, root included."""
        return self.tokens.shape[1]

    def ancestor_mask(self) -> jax.Array:
        """bool [B, T, T]: mask[b, i, j] = node j is node i or its ancestor (valid nodes only)."""
        return ancestor_mask(self.parents, self.valid)


def ancestor_mask(parents: jax.Array, valid: jax.Array) -> jax.Array:
    """bool [B, T, T] from parents [B, T] (parents[i] < i, -1 for none) and valid [B, T].

    Pointer jumping, no loop over nodes: after k rounds `reach[b, i]` holds node i's ancestors at
    distance < 2^k (itself included) and `jump[b, i]` its ancestor at distance 2^k (-1 if none);
    one round merges the reach of the node 2^k above. ceil(log2 T) rounds of [B, T, T] gathers
    and ORs cover every depth < T, instead of T - 1 dependent row updates (one small kernel
    sequence each on GPU). Boolean ORs: exact, the same mask as the row-by-row definition.
    """
    batch, nodes = parents.shape
    eye = jnp.broadcast_to(jnp.eye(nodes, dtype=bool), (batch, nodes, nodes))
    reach, jump = eye, parents.astype(jnp.int32)  # [B, T, T], [B, T]
    for _ in range(max(nodes - 1, 0).bit_length()):  # ceil(log2 T) rounds: 2^rounds >= T
        has = jump >= 0  # [B, T]
        safe = jnp.maximum(jump, 0)
        above = jnp.take_along_axis(reach, safe[:, :, None], axis=1)  # [B, T, T]: reach[jump[i]]
        reach = reach | (above & has[:, :, None])
        jump = jnp.where(has, jnp.take_along_axis(jump, safe, axis=1), -1)
    return reach & valid[:, :, None] & valid[:, None, :]


def sibling_links(parents: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """first_child, next_sibling: int32 [B, T], -1 where none (valid nodes only, index order)."""
    nodes = parents.shape[-1]
    idx = jnp.arange(nodes)
    is_child = (parents[:, None, :] == idx[None, :, None]) & valid[:, None, :]  # [B, parent, child]
    first_child = jnp.min(jnp.where(is_child, idx[None, None, :], nodes), axis=-1)
    # next sibling of j: smallest j' > j with the same parent
    same_parent = (parents[:, :, None] == parents[:, None, :]) & valid[:, None, :]  # [B, j, j']
    later = idx[None, None, :] > idx[None, :, None]
    next_sibling = jnp.min(jnp.where(same_parent & later, idx[None, None, :], nodes), axis=-1)
    as_link = lambda x: jnp.where(x == nodes, -1, x).astype(jnp.int32)
    return as_link(first_child), as_link(next_sibling)


def root_only(root: jax.Array) -> DraftTree:
    """The empty draft: just the root (plain autoregressive decoding is this tree every step)."""
    batch = root.shape[0]
    return DraftTree(
        tokens=root[:, None].astype(jnp.int32),
        parents=jnp.full((batch, 1), -1, jnp.int32),
        depths=jnp.zeros((batch, 1), jnp.int32),
        valid=jnp.ones((batch, 1), bool),
        child_kind=jnp.zeros((batch, 1), jnp.int32),
        draft_probs=None,
    )
