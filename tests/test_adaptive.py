"""Adaptive draft length: lossless (greedy and sampled), learns, and really stops drafting early."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stats import stat_pvalue
from stepping import run_steps

import specdec
from drafters import DraftModel, Eagle, EarlyExit
from specdec.contract import Drafter
from trees import Adaptive
from trees.adaptive import sample_beta

PROMPTS = [[5, 17, 3, 99, 42, 8, 1], [64, 2, 2], [7, 8, 9, 7, 8, 9, 7, 8]]


@pytest.fixture(scope="module")
def plain_eos(llama):
    free = specdec.generate(llama, PROMPTS, max_new_tokens=16)
    eos = int(free.tokens[1, 5])
    return eos, specdec.generate(llama, PROMPTS, max_new_tokens=16, eos_token_id=eos)


@pytest.mark.parametrize(
    "policy",
    [Adaptive(5), Adaptive(5, method="confidence", threshold=0.2), Adaptive(4, children="sample")],
    ids=["thompson", "confidence", "thompson-sample"],
)
@pytest.mark.parametrize("drafter_name", ["poor", "self", "early_exit"])
def test_adaptive_greedy_equals_plain(llama, tiny_draft, plain_eos, policy, drafter_name):
    eos, plain = plain_eos
    drafter = {
        "poor": lambda: DraftModel(tiny_draft),
        "self": lambda: DraftModel(llama),
        "early_exit": lambda: EarlyExit(1),
    }[drafter_name]()
    out = specdec.generate(
        llama, PROMPTS, max_new_tokens=16, eos_token_id=eos, drafter=drafter, policy=policy
    )
    np.testing.assert_array_equal(out.tokens, plain.tokens)
    np.testing.assert_array_equal(out.lengths, plain.lengths)


def test_thompson_posterior_learns_each_rows_acceptance(llama, tiny_draft):
    for draft, high in ((llama, True), (tiny_draft, False)):
        states, _ = run_steps(
            llama, PROMPTS, 40, drafter=DraftModel(draft), policy=Adaptive(6, draft_cost=0.05)
        )
        post = states[-1].policy_state
        rate = np.asarray(post.successes / (post.successes + post.failures))  # [B]
        assert (rate > 0.9).all() if high else (rate < 0.5).all(), rate


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CountingDrafter(Drafter):
    """Wraps a drafter and counts the expand (draft forward) calls made after the root's."""

    inner: Drafter

    @property
    def vocab_size(self):
        return self.inner.vocab_size

    supported_children = frozenset({"top", "sample"})

    def init_state(self, batch, capacity, policy):
        return self.inner.init_state(batch, capacity, policy), jnp.int32(0)

    def prefill(self, state, inputs):
        return self.inner.prefill(state[0], inputs), state[1]

    def expander(self, ctx, policy):
        inner = self.inner.expander(ctx, policy)

        class Counting:
            def root(self, state):
                logits, s = inner.root(state[0])
                return logits, (s, state[1])

            def expand(self, state, tree, frontier):
                logits, s = inner.expand(state[0], tree, frontier)
                return logits, (s, state[1] + 1)

        return Counting()


def test_drafting_really_stops_early(llama, tiny_draft):
    # A threshold of 1 stops every row after its first draft: no expand call ever runs.
    states, _ = run_steps(
        llama,
        PROMPTS,
        12,
        drafter=CountingDrafter(DraftModel(llama)),
        policy=Adaptive(6, method="confidence", threshold=1.0),
    )
    assert int(states[-1].drafter_state[1]) == 0
    # Thompson with a poor drafter: short drafts, far fewer forwards than fixed depth would use.
    states, _ = run_steps(
        llama, PROMPTS, 24, drafter=CountingDrafter(DraftModel(tiny_draft)), policy=Adaptive(6)
    )
    steps = len(states) - 1
    expands = int(states[-1].drafter_state[1])
    assert expands < 0.5 * steps * 5, (expands, steps)


@pytest.mark.slow
@pytest.mark.parametrize(
    "policy,sampling",
    [
        (Adaptive(3, children="sample"), dict(temperature=1.0, top_k=3)),
        (Adaptive(3, method="confidence", threshold=0.3), dict(temperature=0.7, top_p=0.9)),
        (Adaptive(3, children="sample"), dict(temperature=1.3)),
    ],
    ids=["thompson-sample-topk", "confidence-top-topp", "thompson-sample-hot"],
)
def test_adaptive_keeps_the_target_distribution(vocab4_target, policy, sampling):
    draft = specdec.Model.random(
        dataclasses.replace(vocab4_target.config, initializer_range=1.5), seed=12
    )
    pvalue, tau = stat_pvalue(vocab4_target, DraftModel(draft), policy, **sampling)
    assert pvalue > 1e-3, f"p={pvalue:.3g}"
    assert tau > 1.05


def test_thompson_takes_the_drafters_cost_estimate_unless_given(llama, tiny_draft):
    cfg = llama.config
    bound = Adaptive(4).bind(EarlyExit(1), cfg)
    assert bound.draft_cost == pytest.approx(1 / cfg.num_layers)
    draft = DraftModel(tiny_draft)
    ratio = tiny_draft.config.num_params() / cfg.num_params()
    assert Adaptive(4).bind(draft, cfg).draft_cost == pytest.approx(ratio)
    head = Eagle.random(llama, version=1, seed=0)
    assert Adaptive(4).bind(head, cfg).draft_cost == pytest.approx(1 / cfg.num_layers)
    assert Adaptive(4, draft_cost=0.3).bind(draft, cfg).draft_cost == 0.3  # the caller's wins
    assert Adaptive(4, method="confidence").bind(draft, cfg).draft_cost is None  # unused there
    with pytest.raises(ValueError, match="draft_cost"):
        Adaptive(4, draft_cost=-1.0)
    # generate binds before compiling: the bound policy decodes like plain greedy decoding.
    ids = [[1, 2, 3, 4], [5, 6]]
    plain = specdec.generate(llama, ids, max_new_tokens=12)
    out = specdec.generate(llama, ids, max_new_tokens=12, drafter=EarlyExit(1), policy=Adaptive(4))
    assert out.sequences() == plain.sequences()


@pytest.mark.parametrize("a,b", [(1.0, 1.0), (2.0, 5.0), (30.0, 4.0), (0.5, 0.5), (200.0, 3.0)])
def test_thompson_beta_draws_follow_the_beta_law(a, b):
    """The loop-free sampler against scipy's Beta CDF (Kolmogorov-Smirnov, 40k draws); the same
    test rejects a neighbouring law, so it has the power to fail."""
    stats = pytest.importorskip("scipy.stats")
    shape = lambda v: jnp.full((40_000,), v, jnp.float32)
    x = np.asarray(jax.jit(sample_beta)(jax.random.key(1), shape(a), shape(b)))
    assert stats.kstest(x, stats.beta(a, b).cdf).pvalue > 1e-3
    assert stats.kstest(x, stats.beta(a * 1.25, b).cdf).pvalue < 1e-6


def test_thompson_draw_has_no_rejection_loop():
    """jax.random.beta rejects in a while_loop (a host round trip per iteration on a GPU, every
    decode step); the length draw must not."""
    posterior = Adaptive(6).init_state(3)
    jaxpr = str(jax.make_jaxpr(Adaptive(6).lengths)(posterior, jax.random.key(0)))
    assert "random_gamma" not in jaxpr and "while" not in jaxpr
    assert "random_gamma" in str(jax.make_jaxpr(jax.random.beta)(jax.random.key(0), 1.0, 1.0))
