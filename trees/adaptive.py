"""Adaptive draft length: a chain whose length is chosen per row and per step.

Two methods, both deciding from the draft side and past verdicts only (never from the target's
coin flips of the current step), so every verification rule stays exact: the tree handed to the
verifier is a function of draft logits, earlier outcomes and an independent key, exactly like a
fixed tree is.

- "thompson" (EESD, Liu et al. 2024): each row keeps a Beta(a, b) posterior over its per-token
  acceptance rate r. Each step it samples r ~ Beta(a, b) and drafts the length k in [1, depth]
  that maximises expected tokens per unit of cost, (1 - r^(k+1)) / (1 - r) / (1 + draft_cost k)
  (draft_cost: the caller's, else the drafter's size-based estimate `Drafter.draft_cost`),
  then updates the posterior with the verdict: n accepted drafts are n successes, and a rejection
  (n < k) one failure.
- "confidence" (in the spirit of SpecDec++): keep drafting while the product of the draft's
  probabilities of its own drafted tokens, an estimate that the whole draft is accepted, stays at
  or above `threshold`; the token that crosses it is still verified.

Drafting really stops: levels run in a `lax.while_loop` that ends when every row has stopped, so
the skipped depths cost no draft forward (rows that stopped earlier ride along, masked).
"""

import dataclasses

import jax
import jax.numpy as jnp

from specdec.contract import Policy, StepOutcome
from specdec.sampling import probabilities, sample
from specdec.tree import ChildKind, DraftTree

METHODS = ("thompson", "confidence")
DEFAULT_DRAFT_COST = 0.1  # a draft level's cost when neither the caller nor the drafter says


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LengthPosterior:
    """Per-row Beta posterior over the per-token acceptance rate."""

    successes: jax.Array  # [B] float32: a of Beta(a, b)
    failures: jax.Array  # [B] float32: b of Beta(a, b)


def sample_gamma(key: jax.Array, shape: jax.Array, attempts: int = 8) -> jax.Array:
    """Gamma(shape, 1) draws [B] for shape [B] > 0 without a loop: Marsaglia and Tsang's method
    with `attempts` proposals drawn at once, the first accepted kept (each is accepted with
    probability >= 0.95 for shape >= 1, so all fail with probability < 0.05 ** attempts; then
    the mode-like d is returned); shape < 1 via Gamma(shape + 1) * U ** (1 / shape).

    `jax.random.gamma` rejects in a `while_loop`, which on a GPU reads its predicate back to the
    host every iteration: Thompson's draw sits in every decode step."""
    boost = shape < 1.0
    alpha = jnp.where(boost, shape + 1.0, shape)
    d = alpha - 1.0 / 3.0
    c = 1.0 / jnp.sqrt(9.0 * d)
    k_norm, k_unif, k_boost = jax.random.split(key, 3)
    x = jax.random.normal(k_norm, (attempts, *shape.shape))  # [A, B]
    u = jax.random.uniform(k_unif, (attempts, *shape.shape), minval=1e-12)
    v = (1.0 + c * x) ** 3
    log_v = jnp.log(jnp.maximum(v, 1e-30))
    accepted = (v > 0) & (jnp.log(u) < 0.5 * x * x + d - d * v + d * log_v)  # [A, B]
    first = jnp.argmax(accepted, axis=0)  # [B] the first accepted proposal (0 if none)
    draw = jnp.take_along_axis(d * v, first[None], axis=0)[0]
    draw = jnp.where(jnp.any(accepted, axis=0), draw, d)
    u_boost = jax.random.uniform(k_boost, shape.shape, minval=1e-12)
    return jnp.where(boost, draw * u_boost ** (1.0 / shape), draw)


def sample_beta(key: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """Beta(a, b) draws [B] as X / (X + Y), X ~ Gamma(a), Y ~ Gamma(b), loop-free."""
    key_a, key_b = jax.random.split(key)
    x, y = sample_gamma(key_a, a), sample_gamma(key_b, b)
    return x / jnp.maximum(x + y, 1e-30)


@dataclasses.dataclass(frozen=True)
class Adaptive(Policy):
    """A chain of 1..depth drafts per row and step (see the module docstring for the methods)."""

    depth: int = 8  # longest chain
    method: str = "thompson"
    #: thompson: one draft level's cost in target forwards; None: the drafter's estimate
    #: (`Drafter.draft_cost`, e.g. E / L for EarlyExit(E)), DEFAULT_DRAFT_COST if it has none
    draft_cost: float | None = None
    threshold: float = 0.4  # confidence: stop once P(whole draft accepted) estimate < threshold
    prior: tuple[float, float] = (1.0, 1.0)  # thompson: Beta prior (successes, failures)
    children: str = "top"  # "top": the draft's argmax; "sample": a draw from q (Leviathan)

    def __post_init__(self):
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"Adaptive depth must be an integer >= 1, got {self.depth!r}")
        if self.method not in METHODS:
            raise ValueError(f"Adaptive method={self.method!r} is not one of {METHODS}")
        if self.children not in ("top", "sample"):
            raise ValueError(
                f"Adaptive chains take children 'top' or 'sample', got {self.children!r}"
            )
        if self.draft_cost is not None and not 0.0 <= float(self.draft_cost) < 1e6:
            raise ValueError(f"draft_cost must be a number in [0, 1e6), got {self.draft_cost!r}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r}")
        if len(self.prior) != 2 or min(self.prior) <= 0:
            raise ValueError(f"prior must be two positive numbers, got {self.prior!r}")

    @property
    def max_nodes(self) -> int:
        return self.depth + 1

    @property
    def max_depth(self) -> int:
        return self.depth

    @property
    def max_leaves(self) -> int:
        return 1

    @property
    def max_children(self) -> int:
        return 1  # a chain

    def bind(self, drafter, target_config) -> "Adaptive":
        """Take the drafter's cost estimate when the caller gave no `draft_cost`."""
        if self.draft_cost is not None or self.method != "thompson":
            return self
        cost = drafter.draft_cost(target_config)
        return self if cost is None else dataclasses.replace(self, draft_cost=float(cost))

    def init_state(self, batch: int) -> LengthPosterior:
        return LengthPosterior(
            successes=jnp.full((batch,), self.prior[0], jnp.float32),
            failures=jnp.full((batch,), self.prior[1], jnp.float32),
        )

    def lengths(self, policy_state: LengthPosterior, key: jax.Array) -> jax.Array:
        """int32 [B]: the Thompson draw of each row's draft length in [1, depth]."""
        rate = sample_beta(key, policy_state.successes, policy_state.failures)  # [B]
        rate = jnp.clip(rate, 0.0, 1.0 - 1e-6)
        k = jnp.arange(1, self.depth + 1, dtype=jnp.float32)  # [K]
        expected = (1.0 - rate[:, None] ** (k + 1)) / (1.0 - rate[:, None])  # [B, K] tokens
        cost = DEFAULT_DRAFT_COST if self.draft_cost is None else self.draft_cost
        score = expected / (1.0 + cost * k)
        return (jnp.argmax(score, axis=1) + 1).astype(jnp.int32)

    def build(self, expander, state, root, params, key, policy_state=()):
        batch, nodes = root.shape[0], self.max_nodes
        length_key, draw_key = jax.random.split(key)
        if self.method == "thompson":
            limit = self.lengths(policy_state, length_key)  # [B]
        else:
            limit = jnp.full((batch,), self.depth, jnp.int32)
        greedy = params.temperature <= 0
        sampled = self.child_kind == ChildKind.WITH_REPLACEMENT
        kind = jnp.where(greedy, ChildKind.DETERMINISTIC, self.child_kind).astype(jnp.int32)
        index = jnp.arange(nodes, dtype=jnp.int32)
        tree = DraftTree(
            tokens=jnp.zeros((batch, nodes), jnp.int32).at[:, 0].set(root),
            parents=jnp.broadcast_to(index - 1, (batch, nodes)),
            depths=jnp.broadcast_to(index, (batch, nodes)),
            valid=jnp.zeros((batch, nodes), bool).at[:, 0].set(True),
            child_kind=jnp.broadcast_to(kind, (batch, nodes)),
            draft_probs=None,
        )
        draft_probs = jnp.zeros((batch, nodes, 0), jnp.float32)

        def add_level(depth, logits, tree, draft_probs, confidence, active, key):
            """Child of node `depth` from draft logits [B, V] for the rows still drafting."""
            q = probabilities(logits, params)  # [B, V]
            token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            if sampled:  # ranked at temperature 0, where q is one-hot anyway
                token = jnp.where(greedy, token, sample(key, q))
            child = depth + 1
            tokens = tree.tokens.at[:, child].set(jnp.where(active, token, 0))
            valid = tree.valid.at[:, child].set(active)
            if sampled:
                draft_probs = draft_probs.at[:, depth].set(q)
            # the draft's own probability of what it drafted (at temperature 1 when greedy)
            own = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
            confidence = confidence * jnp.take_along_axis(own, token[:, None], axis=1)[:, 0]
            more = active & (child < limit)
            if self.method == "confidence":
                more = more & (confidence >= self.threshold)
            tree = dataclasses.replace(tree, tokens=tokens, valid=valid)
            return tree, draft_probs, confidence, more

        logits, state = expander.root(state)  # [B, V]
        if sampled:
            draft_probs = jnp.zeros((batch, nodes, logits.shape[-1]), jnp.float32)
        keys = jax.random.split(draw_key, self.depth)
        tree, draft_probs, confidence, active = add_level(
            0, logits, tree, draft_probs, jnp.ones((batch,)), jnp.ones((batch,), bool), keys[0]
        )

        def cond(carry):
            depth, _, _, _, _, active = carry
            return (depth < self.depth) & jnp.any(active)

        def body(carry):
            depth, state, tree, draft_probs, confidence, active = carry
            frontier = jnp.broadcast_to(depth, (batch, 1)).astype(jnp.int32)
            logits, state = expander.expand(state, tree, frontier)  # [B, 1, V]
            tree, draft_probs, confidence, active = add_level(
                depth, logits[:, 0], tree, draft_probs, confidence, active, keys[depth]
            )
            return depth + 1, state, tree, draft_probs, confidence, active

        carry = (jnp.int32(1), state, tree, draft_probs, confidence, active)
        _, state, tree, draft_probs, _, _ = jax.lax.while_loop(cond, body, carry)
        return dataclasses.replace(tree, draft_probs=draft_probs if sampled else None), state

    def observe(self, policy_state: LengthPosterior, outcome: StepOutcome) -> LengthPosterior:
        if self.method != "thompson":
            return policy_state
        drafted = jnp.sum(outcome.tree.valid, axis=1) - 1  # [B]
        accepted = outcome.verdict.num_accepted.astype(jnp.float32)
        live = outcome.committed > 0  # finished rows learn nothing
        rejected = (outcome.verdict.num_accepted < drafted).astype(jnp.float32)
        return LengthPosterior(
            successes=policy_state.successes + jnp.where(live, accepted, 0.0),
            failures=policy_state.failures + jnp.where(live, rejected, 0.0),
        )
