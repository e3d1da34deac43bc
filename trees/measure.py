"""Measurements that run the decode loop: per-rank acceptance and per-level draft / verify times.

These tools sit above the engine (they call `specdec.generate` and step the loop), unlike the
policies themselves, which only implement `specdec.contract.Policy`. Their results feed
`trees.Sequoia(acceptance=...)` and `trees.sequoia.choose_budget`.
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specdec.contract import CHILDREN_MODES, Drafter
from specdec.engine.generate import generate, prepare
from specdec.engine.loop import initial_state, step
from trees.sequoia import Sequoia
from trees.static import Static


@dataclasses.dataclass(frozen=True)
class _RankCounter(Static):
    """A one-level Static tree that counts, per row, the accepted child's rank."""

    def init_state(self, batch):
        # [B, width + 1]: column r < width counts steps accepting rank r; the last counts steps
        return jnp.zeros((batch, len(self.paths) + 1), jnp.int32)

    def observe(self, counts, outcome):
        live = outcome.committed > 0  # [B] finished rows do not count
        accepted = outcome.verdict.num_accepted > 0
        rank = jnp.where(accepted, outcome.verdict.path[:, 1] - 1, len(self.paths))  # [B]
        width = counts.shape[1] - 1
        hit = (jnp.arange(width + 1)[None, :] == rank[:, None]) & (rank[:, None] < width)
        steps = jnp.arange(width + 1)[None, :] == width
        return counts + (live[:, None] & (hit | steps)).astype(jnp.int32)


def _final_policy_state(target, prompts, policy, drafter, max_new_tokens, seed, sampling):
    """Run the decode loop and return the policy's state at the end (generate discards it)."""
    prepared = prepare(
        target,
        prompts,
        max_new_tokens=max_new_tokens,
        drafter=drafter,
        policy=policy,
        seed=seed,
        **sampling,
    )
    shape = prepared.shape

    def run(args):
        net, drafter, _, _, _, _, max_new, params, _, eos = args
        state = initial_state(*args, policy=policy, shape=shape)
        one = lambda s: step(net, drafter, policy, max_new, params, eos, s)
        return jax.lax.while_loop(lambda s: ~jnp.all(s.done), one, state).policy_state

    return jax.jit(run)(prepared.args)


def measure_acceptance(
    target,
    drafter: Drafter,
    prompts,
    *,
    width: int = 8,
    children: str = "top",
    max_new_tokens: int = 64,
    seed: int = 0,
    **sampling,
) -> tuple[float, ...]:
    """Per-rank acceptance a[0..width-1] of `drafter` on `prompts` (temperature etc. in sampling).

    Decodes with a one-level tree of `width` children per step and counts which rank the verdict
    accepted: a[r] = (steps accepting rank r) / steps. Each step is one observation of a node
    whose context is real generated text; by positional acceptance (module docstring) the counts
    do not depend on `width` beyond truncating the vector.
    """
    if children not in CHILDREN_MODES or children == "sample":
        raise ValueError(
            f"children must be 'top' or 'sample_without_replacement', got {children!r}"
        )
    policy = _RankCounter(tuple((r,) for r in range(width)), children)
    counts = _final_policy_state(target, prompts, policy, drafter, max_new_tokens, seed, sampling)
    totals = np.asarray(counts).sum(axis=0)
    return tuple(float(c) / max(int(totals[-1]), 1) for c in totals[:-1])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FreeDrafter(Drafter):
    """Drafts all-zero logits at no cost (`FreeDrafter(vocab)`): a step with it is (almost) only
    the verify, which is how `measure_step_times` and the benchmarks time verification."""

    vocab: int = dataclasses.field(metadata=dict(static=True))

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def init_state(self, batch, capacity, policy):
        return ()

    def expander(self, ctx, policy):
        vocab = self.vocab

        class Zeros:
            def root(self, state):
                return jnp.zeros((ctx.hist_len.shape[0], vocab), jnp.float32), state

            def expand(self, state, tree, frontier):
                return jnp.zeros((*frontier.shape, vocab), jnp.float32), state

        return Zeros()


def measure_step_times(
    target,
    drafter: Drafter,
    prompts,
    budgets: Sequence[int],
    acceptance: Sequence[float],
    *,
    max_new_tokens: int = 64,
    repeats: int = 2,
) -> dict[int, tuple[float, float]]:
    """{budget: (draft-level seconds, verify seconds)} measured with `specdec.generate` (greedy).

    For each budget, the Sequoia tree for `acceptance` is decoded with `drafter` and with a free
    drafter (zero logits, no forward): the latter's seconds per target forward are the verify
    time; the difference, divided by the tree's depth, is one draft level. Compilation is
    excluded (generate reports it apart); the best of `repeats` runs is kept.
    """
    times = {}
    for budget in budgets:
        policy = Sequoia(budget, tuple(acceptance))
        verify = _seconds_per_step(target, prompts, _free(target), policy, max_new_tokens, repeats)
        drafted = _seconds_per_step(target, prompts, drafter, policy, max_new_tokens, repeats)
        times[budget] = (max(drafted - verify, 0.0) / policy.max_depth, verify)
    return times


def measure_verify_seconds(
    target, prompts, budget: int, acceptance: Sequence[float], *, max_new_tokens: int = 16,
    repeats: int = 2,
) -> float:  # fmt: skip
    """Seconds per step of greedy decoding of the Sequoia tree of `budget` nodes with a free
    drafter: the target's verify forward plus the step's fixed work (`measure_step_times`'
    verify half, without the drafter's runs)."""
    policy = Sequoia(budget, tuple(acceptance))
    return _seconds_per_step(target, prompts, _free(target), policy, max_new_tokens, repeats)


def _free(target) -> "FreeDrafter":
    return FreeDrafter(target.config.vocab_size)


def _seconds_per_step(target, prompts, drafter, policy, max_new_tokens: int, repeats: int) -> float:
    """Best of `repeats` greedy runs: wall seconds per target forward (compiles excluded)."""
    runs = [
        generate(target, prompts, max_new_tokens=max_new_tokens, drafter=drafter, policy=policy)
        for _ in range(repeats)
    ]
    return min(r.stats.wall_seconds / max(r.stats.target_forwards, 1) for r in runs)
