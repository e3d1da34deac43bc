"""Exact verification of a draft tree against the target's distributions.

Walk down from the root. At the current accepted node u with target distribution p (temperature /
top-k / top-p applied by `specdec.sampling`), try u's children in their stored order with the rule
their `ChildKind` names:

  DETERMINISTIC (point-mass candidates; greedy, top-k trees, n-gram, SpecExec):
      accept x_i with prob p_i(x_i); on rejection p_{i+1} = norm(p_i with x_i zeroed).
  WITH_REPLACEMENT (siblings i.i.d. from q; SpecInfer multi-step speculative sampling):
      accept x_i with prob min(1, p_i(x_i) / q(x_i)); on rejection p_{i+1} = norm(max(p_i - q, 0)).
  WITHOUT_REPLACEMENT (distinct siblings; Gumbel-top-k / stochastic beam, RSD):
      accept x_i with prob min(1, p_i(x_i) / q_i(x_i)), q_i = q without x_1..x_{i-1}, renormalised;
      on rejection p_{i+1} = norm(max(p_i - q_i, 0)).

A single sampled child is the chain case (Leviathan et al. / Chen et al.). On acceptance the walk
moves to the child with that child's fresh target distribution; when a node's children are exhausted
(or it has none), the bonus token is drawn from the current residual p. Each rule keeps the emitted
tokens distributed exactly as the target's. At temperature 0, p is one-hot and every rule reduces to
"accept the child equal to the target argmax".
"""

import dataclasses

import jax
import jax.numpy as jnp

from specdec.sampling import SamplingParams, probabilities, sample
from specdec.tree import ChildKind, DraftTree, sibling_links


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Verdict:
    """Outcome of verifying one tree per sequence."""

    path: (
        jax.Array
    )  # [B, T] int32: accepted nodes root-first; path[:, 0] = 0, valid up to num_accepted
    num_accepted: jax.Array  # [B] int32: accepted draft tokens (path length - 1)
    bonus: jax.Array  # [B] int32: token drawn after the last accepted node

    def emitted(self, tree: DraftTree) -> jax.Array:
        """int32 [B, T]: accepted drafts then the bonus; entries past num_accepted + 1 are junk."""
        nodes = tree.num_nodes
        shifted = jnp.concatenate([self.path[:, 1:], jnp.zeros_like(self.path[:, :1])], axis=1)
        tokens = jnp.take_along_axis(tree.tokens, shifted, axis=1)  # [B, T]
        at_bonus = jnp.arange(nodes)[None, :] == self.num_accepted[:, None]
        return jnp.where(at_bonus, self.bonus[:, None], tokens)


def _normalized(x: jax.Array, fallback: jax.Array) -> jax.Array:
    total = jnp.sum(x)
    # A residual with no mass can only arise from rounding (rejection had probability ~0): keep p.
    return jnp.where(total > 0, x / jnp.where(total > 0, total, 1.0), fallback)


def _verify_one(tokens, valid, kinds, draft_probs, logits, first_child, next_sibling, params, key):
    """Verification walk for one sequence. Shapes: [T] / [T, V]; returns (path [T], n, bonus)."""
    nodes = tokens.shape[0]
    walk_key, bonus_key = jax.random.split(key)

    def q_of(node):
        if draft_probs is None:
            return jnp.zeros(logits.shape[-1], jnp.float32)
        return draft_probs[node]

    init = dict(
        node=jnp.int32(0),  # current accepted node u
        candidate=first_child[0],  # child of u being tried, -1 when exhausted
        p=probabilities(logits[0], params),  # residual target distribution at u
        q=q_of(0),  # residual draft distribution at u (changes only for WITHOUT_REPLACEMENT)
        path=jnp.zeros((nodes,), jnp.int32),
        n=jnp.int32(0),
        step=jnp.int32(0),
    )

    def body(s):
        j = s["candidate"]
        x = tokens[j]
        kind = kinds[s["node"]]
        p, q = s["p"], s["q"]
        sampled = kind != ChildKind.DETERMINISTIC
        # A sampled child with q(x) = 0 cannot have been drawn: treat it as absent.
        usable = valid[j] & (~sampled | (q[x] > 0))
        ratio = p[x] / jnp.where(q[x] > 0, q[x], 1.0)
        accept_prob = jnp.where(sampled, jnp.minimum(1.0, ratio), p[x])
        u = jax.random.uniform(jax.random.fold_in(walk_key, s["step"]))
        accept = usable & (u < accept_prob)

        p_if_rejected = jnp.where(
            sampled,
            _normalized(jnp.maximum(p - q, 0.0), p),
            _normalized(p.at[x].set(0.0), p),
        )
        q_if_rejected = jnp.where(
            kind == ChildKind.WITHOUT_REPLACEMENT, _normalized(q.at[x].set(0.0), q), q
        )
        p_next = jnp.where(
            accept, probabilities(logits[j], params), jnp.where(usable, p_if_rejected, p)
        )
        q_next = jnp.where(accept, q_of(j), jnp.where(usable, q_if_rejected, q))
        return dict(
            node=jnp.where(accept, j, s["node"]),
            candidate=jnp.where(accept, first_child[j], next_sibling[j]),
            p=p_next,
            q=q_next,
            path=jnp.where(accept, s["path"].at[s["n"] + 1].set(j), s["path"]),
            n=s["n"] + accept.astype(jnp.int32),
            step=s["step"] + 1,
        )

    final = jax.lax.while_loop(lambda s: s["candidate"] >= 0, body, init)
    return final["path"], final["n"], sample(bonus_key, final["p"])


def verify(tree: DraftTree, logits: jax.Array, params: SamplingParams, key: jax.Array) -> Verdict:
    """Verify each sequence's tree against target logits [B, T, V] (float32, one row per node)."""
    first_child, next_sibling = sibling_links(tree.parents, tree.valid)
    keys = jax.random.split(key, tree.tokens.shape[0])
    verify_one = lambda t, v, c, q, lg, fc, ns, k: _verify_one(t, v, c, q, lg, fc, ns, params, k)
    path, n, bonus = jax.vmap(verify_one)(
        tree.tokens,
        tree.valid,
        tree.child_kind,
        tree.draft_probs,
        logits,
        first_child,
        next_sibling,
        keys,
    )
    return Verdict(path=path, num_accepted=n, bonus=bonus)
