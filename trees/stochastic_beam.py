"""RSD-S (Jeon et al. 2024): draft trees by stochastic beam search, verified without replacement.

Stochastic beam search (Kool, van Hoof & Welling 2019) samples `width` whole sequences of the
draft's distribution q (after the request's temperature / top-k / top-p) without replacement.
Every prefix u carries a perturbed score G_u (the root's is 0). Expanding u, each token x gets

    phi_ux = log q(u) + log q(x | u) + Gumbel_ux                    (i.i.d. standard Gumbels)
    G_ux   = -log(exp(-G_u) - exp(-max_x phi_ux) + exp(-phi_ux))   (Kool's top-down Gumbel)

so that {G_ux}_x are independent Gumbel(log q(ux)) conditioned on their maximum being G_u. Per
level, the `width` best G_ux over all beams' children become the next level's beams (the unlikely
ones are truncated). The tree is every level's beams; node u's children are stored by decreasing
G, and the verifier applies the WITHOUT_REPLACEMENT rule with q(. | u) recorded in draft_probs.

Why this is exact. Fix a node u the verification walk has reached, and everything decided before
(the tree above u's level, all of the level's other beams' perturbations, the verifier's earlier
coin flips). Let x_1, x_2, ... be u's children in decreasing G_ux and M_1 > M_2 > ... their scores;
the level keeps the first K of them, K = how many of u's children are in the level's top `width`.

1. G_ux is increasing in phi_ux (same u), so x_1, x_2, ... is the order of log q(x | u) + Gumbel:
   Gumbel-top-k, i.e. sequential sampling without replacement from q(. | u).
2. Given x_1..x_{i-1} and M_1..M_{i-1}, the other children's scores are independent Gumbels
   truncated below M_{i-1}; their argmax x_i ~ q(. | u) without x_1..x_{i-1}, renormalised, and
   their max M_i is independent of x_i (the max and argmax of independent Gumbels are
   independent, and truncating all of them at one bound keeps that).
3. K >= i exactly when at most width - i of the other beams' children score above M_i. That
   event is a function of M_i and of randomness independent of u's children, so it is
   independent of x_i given the history.

So each tried sibling x_i is, given everything the walk has seen (including that an i-th sibling
exists), a draw from q_i = q without x_1..x_{i-1}: the premise of the recursive rejection step,
which then leaves the output distributed as the current residual p_i whether it accepts x_i,
goes on to x_{i+1} or, with no sibling left, samples the bonus from p_{i+1}. The truncation couples
siblings only through the scores M, never through which tokens they are, so it stops the walk at
a stopping time and costs acceptance, not exactness. Below an accepted x_i the same holds with
G_{u x_i} = M_i as the new parent score. The statistical test checks this (tests/test_policies.py),
and that it fails when the same tree is verified with the i.i.d. rule.

At temperature 0 the beams are deterministic: the `width` best prefixes by cumulative
temperature-1 draft log-probability (plain beam search), verified as point masses.
"""

import dataclasses

import jax
import jax.numpy as jnp

from specdec.contract import Policy
from specdec.sampling import probabilities
from specdec.tree import ChildKind, DraftTree


def conditioned_gumbel(phi: jax.Array, parent: jax.Array) -> jax.Array:
    """Gumbels phi [..., V] shifted so that their max is parent [...] (Kool et al. 2019, B.3).

    -log(exp(-parent) - exp(-max phi) + exp(-phi)), computed as parent - softplus(v) with
    v = parent - phi + log(1 - exp(phi - max phi)) to stay finite.
    """
    top = jnp.max(phi, axis=-1, keepdims=True)
    t = parent[..., None]
    v = t - phi + jnp.log1p(-jnp.exp(phi - top))
    return t - jax.nn.relu(v) - jnp.log1p(jnp.exp(-jnp.abs(v)))


@dataclasses.dataclass(frozen=True)
class StochasticBeam(Policy):
    """RSD-S: `width` beams per level for `depth` levels (1 + width x depth nodes)."""

    width: int = 4  # beams kept per level (the level's node count)
    depth: int = 4  # levels below the root (one drafter forward each)
    children: str = "sample_without_replacement"

    def __post_init__(self):
        for name in ("width", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"StochasticBeam {name} must be an integer >= 1, got {value!r}")
        if self.children != "sample_without_replacement":
            raise ValueError(
                "StochasticBeam draws sequences without replacement; its children are "
                f"children='sample_without_replacement', got {self.children!r}"
            )

    @property
    def max_nodes(self) -> int:
        return 1 + self.width * self.depth

    @property
    def max_depth(self) -> int:
        return self.depth

    @property
    def max_leaves(self) -> int:
        return self.width  # the last level; every earlier node is expanded (padding included)

    @property
    def max_children(self) -> int:
        return self.width  # a level's beams may all extend one parent

    def check(self, vocab_size: int) -> None:
        if self.width > vocab_size:
            raise ValueError(
                f"StochasticBeam width={self.width} exceeds the vocabulary's {vocab_size} tokens"
            )

    def build(self, expander, state, root, params, key, policy_state=()):
        batch, width, nodes = root.shape[0], self.width, self.max_nodes
        rows = jnp.arange(batch)[:, None]
        greedy = params.temperature <= 0
        kind = jnp.where(greedy, ChildKind.DETERMINISTIC, self.child_kind).astype(jnp.int32)
        tree = DraftTree(
            tokens=jnp.zeros((batch, nodes), jnp.int32).at[:, 0].set(root),
            parents=jnp.full((batch, nodes), -1, jnp.int32),
            depths=jnp.zeros((batch, nodes), jnp.int32),
            valid=jnp.zeros((batch, nodes), bool).at[:, 0].set(True),
            child_kind=jnp.broadcast_to(kind, (batch, nodes)),
            draft_probs=None,
        )
        logits, state = expander.root(state)
        logits = logits[:, None, :]  # [B, 1, V]
        vocab = logits.shape[-1]
        draft_probs = jnp.zeros((batch, nodes, vocab), jnp.float32)
        frontier = jnp.zeros((1,), jnp.int32)  # node indices of the beams (the same in every row)
        beam_logq = jnp.zeros((batch, 1), jnp.float32)  # [B, F] log q of each beam's prefix
        beam_score = jnp.zeros((batch, 1), jnp.float32)  # [B, F] G of each beam
        for level in range(1, self.depth + 1):
            if level > 1:
                logits, state = expander.expand(
                    state, tree, jnp.broadcast_to(frontier, (batch, width))
                )  # [B, F, V]
            q = probabilities(logits, params)  # [B, F, V]
            draft_probs = draft_probs.at[:, frontier].set(q)
            logq = jnp.where(q > 0, jnp.log(jnp.where(q > 0, q, 1.0)), -jnp.inf)
            # Greedy: cumulative temperature-1 log-probabilities (q is one-hot there).
            step_logq = jnp.where(greedy, jax.nn.log_softmax(logits.astype(jnp.float32)), logq)
            cum = beam_logq[..., None] + step_logq  # [B, F, V]
            key, gumbel_key = jax.random.split(key)
            phi = cum + jax.random.gumbel(gumbel_key, cum.shape, jnp.float32)
            score = jnp.where(greedy, cum, conditioned_gumbel(phi, beam_score))
            score = jnp.where(jnp.isfinite(beam_score)[..., None], score, -jnp.inf)
            # Ties go to the lower flat index: the earlier beam, then the smaller token.
            best, flat = jax.lax.top_k(score.reshape(batch, -1), width)  # [B, W] descending
            slot, token = flat // vocab, (flat % vocab).astype(jnp.int32)
            index = 1 + (level - 1) * width + jnp.arange(width, dtype=jnp.int32)  # [W]
            ok = jnp.isfinite(best)
            tree = dataclasses.replace(
                tree,
                tokens=tree.tokens.at[:, index].set(token),
                parents=tree.parents.at[:, index].set(frontier[slot]),
                depths=tree.depths.at[:, index].set(level),
                valid=tree.valid.at[:, index].set(ok),
            )
            beam_logq = jnp.where(ok, cum.reshape(batch, -1)[rows, flat], -jnp.inf)
            beam_score = best
            frontier = index
        return dataclasses.replace(tree, draft_probs=draft_probs), state
