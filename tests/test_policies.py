"""Sequoia, RSD-S (StochasticBeam) and SpecExec: lossless, and their trees are what they claim.

Greedy output equals plain decoding (batch 3, ragged, EOS) with separate draft models, the target
drafting for itself, early exit (with verify reuse, so node i must stay node i), n-grams and an
EAGLE-3 head; sampled output follows the target's law (chi-square, tests/stats.py) at three
temperatures with top-k / top-p, and the same test catches RSD-S trees verified with the i.i.d.
rule. Tree construction is checked against brute force on a first-order Markov "drafter": the
Sequoia DP against enumeration of every small tree, SpecExec (max_beams=1) against exact
best-first search, StochasticBeam at temperature 0 against plain beam search.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stats import chi_square_pvalue, stat_pvalue

import specdec
from drafters import DraftModel, Eagle, EarlyExit, NGram
from specdec.sampling import SamplingParams
from trees import (
    Adaptive,
    Chain,
    ChildKind,
    Dynamic,
    Sequoia,
    SpecExec,
    Static,
    StochasticBeam,
    choose_budget,
    measure_acceptance,
    measure_step_times,
    optimal_tree,
)
from trees.sequoia import expected_tokens

PROMPTS = [[5, 17, 3, 99, 42, 8, 1], [64, 2, 2], [7, 8, 9, 7, 8, 9, 7, 8]]
ACCEPTANCE = (0.5, 0.2, 0.1)


@pytest.fixture(scope="module")
def plain_eos(llama):
    free = specdec.generate(llama, PROMPTS, max_new_tokens=16)
    eos = int(free.tokens[1, 5])
    return eos, specdec.generate(llama, PROMPTS, max_new_tokens=16, eos_token_id=eos)


# ---- greedy equals plain ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy,drafter_name",
    [
        (Sequoia(10, ACCEPTANCE), "poor"),
        (Sequoia(10, ACCEPTANCE, "sample_without_replacement"), "early_exit"),
        (StochasticBeam(3, 3), "poor"),
        (StochasticBeam(3, 3), "self"),
        (StochasticBeam(2, 3), "early_exit"),
        (SpecExec(256, max_beams=32, max_branch_width=8, depth=12), "poor"),  # 256 nodes on CPU
        (SpecExec(40, max_beams=8, max_branch_width=4, depth=6), "early_exit"),
        (SpecExec(40, max_beams=8, max_branch_width=4, depth=6), "ngram"),
        (StochasticBeam(3, 2), "eagle3"),
        # Last round of one node but branching trees: once verified as paths (max_leaves == 1)
        (SpecExec(8, max_beams=2, max_branch_width=2), "self"),
        (SpecExec(8, max_beams=1, max_branch_width=4), "self"),
        # The target drafting for itself accepts deep into branching trees: commits move paths
        (Sequoia(10, ACCEPTANCE), "self"),
        (Dynamic(depth=4, top_k=2, total_tokens=8), "self"),
    ],
    ids=[
        "sequoia-poor",
        "sequoia-wor-early-exit",
        "rsds-poor",
        "rsds-self",
        "rsds-early-exit",
        "specexec256-poor",
        "specexec-early-exit",
        "specexec-ngram",
        "rsds-eagle3",
        "specexec8-2beams-self",
        "specexec8-1beam-self",
        "sequoia-self",
        "dynamic-self",
    ],
)
def test_greedy_equals_plain(llama, tiny_draft, plain_eos, policy, drafter_name):
    eos, plain = plain_eos
    drafter = {
        "poor": lambda: DraftModel(tiny_draft),
        "self": lambda: DraftModel(llama),
        "early_exit": lambda: EarlyExit(1),  # reuse=True: node i must stay node i
        "ngram": lambda: NGram(3),
        "eagle3": lambda: Eagle.random(
            llama, seed=1, version=3, draft_vocab=48, target_layers=(0, 1)
        ),
    }[drafter_name]()
    out = specdec.generate(
        llama, PROMPTS, max_new_tokens=16, eos_token_id=eos, drafter=drafter, policy=policy
    )
    np.testing.assert_array_equal(out.tokens, plain.tokens)
    np.testing.assert_array_equal(out.lengths, plain.lengths)
    if drafter_name == "self":
        assert out.stats.tau > 2.5


# ---- sampled output follows the target ----------------------------------------------------------

SAMPLING = [
    dict(temperature=0.7, top_k=3),
    dict(temperature=1.0, top_p=0.9),
    dict(temperature=1.3),
]


@pytest.fixture(scope="module")
def random_draft(vocab4_target):
    return specdec.Model.random(
        dataclasses.replace(vocab4_target.config, initializer_range=1.5), seed=12
    )


@pytest.mark.slow
@pytest.mark.parametrize("sampling", SAMPLING, ids=["t0.7-topk", "t1-topp", "t1.3"])
@pytest.mark.parametrize(
    "policy",
    [
        # Depth 2: the 3 sampled tokens are the prefill's and one step's (2 drafts + bonus).
        Sequoia(6, ACCEPTANCE, "sample_without_replacement", depth=2),
        StochasticBeam(2, 2),
        SpecExec(6, max_beams=2, max_branch_width=2, depth=2),
    ],
    ids=["sequoia-wor", "rsds", "specexec"],
)
def test_keeps_the_target_distribution(vocab4_target, random_draft, policy, sampling):
    pvalue, tau = stat_pvalue(vocab4_target, DraftModel(random_draft), policy, **sampling)
    assert pvalue > 1e-3, f"p={pvalue:.3g}"
    assert tau > 1.1  # drafts were accepted, so the law was exercised


@dataclasses.dataclass(frozen=True)
class BeamVerifiedAsIid(StochasticBeam):
    """RSD-S trees handed to the verifier as i.i.d. siblings (the wrong law)."""

    def build(self, expander, state, root, params, key, policy_state=()):
        tree, state = super().build(expander, state, root, params, key, policy_state)
        kind = jnp.full_like(tree.child_kind, ChildKind.WITH_REPLACEMENT)
        return dataclasses.replace(tree, child_kind=kind), state


@pytest.mark.slow
def test_wrong_law_is_caught(vocab4_target, random_draft):
    pvalue, _ = stat_pvalue(
        vocab4_target, DraftModel(random_draft), BeamVerifiedAsIid(2, 2), temperature=1.0
    )
    assert pvalue < 1e-6, f"the test did not catch a wrong law (p={pvalue:.3g})"


# ---- Sequoia's dynamic program ------------------------------------------------------------------


@functools.cache
def _ordered_trees(nodes: int, max_children: int) -> tuple:
    """Every ordered rooted tree of `nodes` nodes (a tree = tuple of child subtrees)."""
    if nodes == 1:
        return ((),)
    out = []
    for first in range(1, nodes):  # nodes in the first child's subtree; the rest = root + others
        for head in _ordered_trees(first, max_children):
            for rest in _ordered_trees(nodes - first, max_children):
                if len(rest) < max_children:
                    out.append((head, *rest))
    return tuple(out)


def _value(tree, acceptance) -> float:
    return 1.0 + sum(acceptance[r] * _value(c, acceptance) for r, c in enumerate(tree))


def _height(tree) -> int:
    return 1 + max(map(_height, tree)) if tree else 0


@pytest.mark.parametrize("seed", range(4))
def test_sequoia_dp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    raw = rng.dirichlet(np.ones(4)) * rng.uniform(0.6, 1.0)
    acceptance = tuple(float(a) for a in raw[: 2 + seed % 2])
    for nodes in range(2, 9):
        trees = _ordered_trees(nodes, len(acceptance))
        for depth in (1, 2, 3, None):
            fits = [t for t in trees if depth is None or _height(t) <= depth]
            if not fits:
                with pytest.raises(ValueError, match="no tree"):
                    optimal_tree(acceptance, nodes, depth)
                continue
            value, paths = optimal_tree(acceptance, nodes, depth)
            assert value == pytest.approx(max(_value(t, acceptance) for t in fits), rel=1e-12)
            assert len(paths) == nodes - 1
            assert value == pytest.approx(expected_tokens(paths, acceptance), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5),
    st.integers(2, 40),
    st.one_of(st.none(), st.integers(1, 6)),
)
def test_sequoia_trees_are_valid_and_monotone(weights, budget, depth):
    total = sum(weights)
    acceptance = tuple(w / max(total, 1.0) * 0.95 for w in weights)
    widest = sum(len(acceptance) ** d for d in range(depth + 1)) if depth else budget
    if budget > widest:
        with pytest.raises(ValueError, match="no tree"):
            Sequoia(budget, acceptance, depth=depth)
        return
    policy = Sequoia(budget, acceptance, depth=depth)
    topo = policy.topology
    assert topo.num_nodes == policy.max_nodes == budget
    assert policy.max_depth <= (depth or budget)
    for i in range(1, budget):
        assert topo.parents[i] < i and topo.depths[i] == topo.depths[topo.parents[i]] + 1
        assert topo.ranks[i] < len(acceptance)
    if budget > 2:  # one node fewer never does better
        smaller, _ = optimal_tree(acceptance, budget - 1, depth)
        assert policy.expected_tokens >= smaller - 1e-12


def _best_value(acceptance, nodes, depth) -> float:
    try:
        return optimal_tree(acceptance, nodes, depth)[0]
    except ValueError:  # no tree that shallow
        return -np.inf


def test_choose_budget_minimises_time_per_token():
    budgets, acceptance = (4, 8, 16, 32), (0.6, 0.2, 0.1)
    draft = lambda n: 0.1
    for verify in (lambda n: 1.0, lambda n: 1.0 + 0.2 * n):
        choice = choose_budget(acceptance, budgets, draft, verify)
        want = min(
            ((d * draft(n) + verify(n)) / f, n, d)
            for n in budgets
            for d in range(1, n)
            if np.isfinite(f := _best_value(acceptance, n, d))
        )
        assert choice.seconds_per_token == pytest.approx(want[0])
        assert (choice.budget, choice.depth) == want[1:]
    # Free verification of any width: the biggest tree wins; costly width: a small one.
    assert choose_budget(acceptance, budgets, draft, lambda n: 1.0).budget == 32
    assert choose_budget(acceptance, budgets, draft, lambda n: 0.5 * n).budget == 4


def test_measure_acceptance_and_step_times(llama, tiny_draft):
    # A drafter identical to the target: its first draw is always accepted (p / q = 1).
    rates = measure_acceptance(
        llama,
        DraftModel(llama),
        PROMPTS,
        width=3,
        children="sample_without_replacement",
        max_new_tokens=12,
        temperature=1.0,
    )
    assert rates == (1.0, 0.0, 0.0)
    times = measure_step_times(
        llama, DraftModel(tiny_draft), PROMPTS, [4], ACCEPTANCE, max_new_tokens=8, repeats=1
    )
    draft, verify = times[4]
    assert draft >= 0.0 and verify > 0.0


# ---- tree construction against brute force ------------------------------------------------------

VOCAB = 12


@dataclasses.dataclass(frozen=True)
class MarkovExpander:
    """Draft logits after a node = table[its token]; the state counts draft forwards."""

    table: jax.Array  # [V, V]
    root_tokens: jax.Array  # [B]

    def root(self, state):
        return self.table[self.root_tokens], state + 1

    def expand(self, state, tree, frontier):
        return self.table[jnp.take_along_axis(tree.tokens, frontier, axis=1)], state + 1


def _build(policy, table, roots, temperature=0.0, seed=0):
    params = SamplingParams.create(temperature)
    run = lambda t, r, k: policy.build(MarkovExpander(t, r), jnp.int32(0), r, params, k)
    tree, forwards = jax.jit(run)(jnp.asarray(table), jnp.asarray(roots), jax.random.key(seed))
    return jax.tree.map(lambda x: None if x is None else np.asarray(x), tree), int(forwards)


def _paths(tree, b) -> dict[int, tuple[int, ...]]:
    """Token path (root excluded) of every valid node of row b; checks the tree's invariants."""
    paths = {0: ()}
    for i in range(1, tree.tokens.shape[1]):
        if not tree.valid[b, i]:
            continue
        parent = int(tree.parents[b, i])
        assert 0 <= parent < i and tree.valid[b, parent]  # topological, closed under ancestors
        assert tree.depths[b, i] == tree.depths[b, parent] + 1
        paths[i] = (*paths[parent], int(tree.tokens[b, i]))
    assert len(set(paths.values())) == len(paths)  # siblings are distinct tokens
    return paths


def _best_first(table, root, budget, width, depth) -> set:
    """The budget - 1 best prefixes by cumulative log-prob, top-`width` children per node."""
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(table), axis=-1))
    scored, frontier = [], [((), 0.0, root)]
    for _ in range(depth):
        nxt = []
        for path, score, last in frontier:
            for tok in np.argsort(-logp[last])[:width]:
                nxt.append(((*path, int(tok)), score + logp[last, tok], int(tok)))
        scored += nxt
        frontier = nxt
    scored.sort(key=lambda x: -x[1])
    return {p for p, _, _ in scored[: budget - 1]}


@pytest.mark.parametrize("budget,width,depth", [(20, 3, 4), (33, 2, 6), (64, 4, 3)])
def test_specexec_one_beam_is_exact_best_first(budget, width, depth):
    rng = np.random.default_rng(budget)
    table = rng.normal(size=(VOCAB, VOCAB)).astype(np.float32) * 2
    roots = np.array([0, 5], np.int32)
    policy = SpecExec(budget, max_beams=1, max_branch_width=width, depth=depth)
    tree, forwards = _build(policy, table, roots)
    assert tree.draft_probs is None and tree.tokens.shape == (2, budget)
    assert forwards == len(policy.rounds) == budget - 1  # root, then one per inserted node
    assert (tree.child_kind == ChildKind.DETERMINISTIC).all()
    for b, root in enumerate(roots):
        paths = _paths(tree, b)
        assert len(paths) == budget  # every slot filled
        assert set(paths.values()) - {()} == _best_first(table, root, budget, width, depth)


@pytest.mark.parametrize("budget,beams,width", [(50, 8, 4), (24, 5, 3), (9, 16, 2)])
def test_specexec_many_beams_builds_valid_trees(budget, beams, width):
    rng = np.random.default_rng(budget)
    table = rng.normal(size=(VOCAB, VOCAB)).astype(np.float32)
    policy = SpecExec(budget, max_beams=beams, max_branch_width=width, depth=5)
    tree, forwards = _build(policy, table, np.array([1, 2, 3], np.int32), temperature=0.8)
    assert forwards == len(policy.rounds)
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(table) / 0.8, axis=-1))
    for b in range(3):
        paths = _paths(tree, b)
        assert len(paths) == budget and max(map(len, paths.values())) <= 5
        # Siblings come best first; each node's cumulative score is at most its parent's.
        for i in range(1, budget):
            sibs = [j for j in range(1, budget) if tree.parents[b, j] == tree.parents[b, i]]
            last = int(tree.tokens[b, tree.parents[b, i]])
            scores = [logp[last, tree.tokens[b, j]] for j in sibs]
            assert scores == sorted(scores, reverse=True)


def _beam_search(table, root, width, depth) -> list[set]:
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(table), axis=-1))
    beams, levels = [((), 0.0, root)], []
    for _ in range(depth):
        cand = [((*p, t), s + logp[last, t], t) for p, s, last in beams for t in range(len(table))]
        beams = sorted(cand, key=lambda x: -x[1])[:width]
        levels.append({p for p, _, _ in beams})
    return levels


@pytest.mark.parametrize("width,depth", [(3, 4), (5, 2)])
def test_stochastic_beam_trees(width, depth):
    rng = np.random.default_rng(width)
    table = rng.normal(size=(VOCAB, VOCAB)).astype(np.float32) * 1.5
    roots = np.array([4, 7], np.int32)
    policy = StochasticBeam(width, depth)
    # Temperature 0: plain beam search, ranked children.
    tree, forwards = _build(policy, table, roots)
    assert forwards == depth and (tree.child_kind == ChildKind.DETERMINISTIC).all()
    for b, root in enumerate(roots):
        paths = _paths(tree, b)
        got = [{p for p in paths.values() if len(p) == d} for d in range(1, depth + 1)]
        assert got == _beam_search(table, root, width, depth)
    # Sampled: `width` distinct sequences per level, q recorded at every expanded node.
    tree, _ = _build(policy, table, roots, temperature=1.0, seed=3)
    assert (tree.child_kind == ChildKind.WITHOUT_REPLACEMENT).all()
    q = np.asarray(jax.nn.softmax(jnp.asarray(table), axis=-1))
    for b in range(2):
        paths = _paths(tree, b)
        assert len(paths) == policy.max_nodes
        for i in range(policy.max_nodes - width):  # every node that was expanded
            np.testing.assert_allclose(tree.draft_probs[b, i], q[tree.tokens[b, i]], rtol=1e-5)


def test_stochastic_beam_samples_sequences_without_replacement():
    """Width 1 is one sequence drawn from the draft (Kool's top-down Gumbel): its 2 tokens over
    many rows follow q(x) q(y | x) (chi-square over the 5 x 5 sequences)."""
    rng = np.random.default_rng(0)
    vocab = 5
    table = rng.normal(size=(vocab, vocab)).astype(np.float32)
    q = np.asarray(jax.nn.softmax(jnp.asarray(table), axis=-1), np.float64)
    policy = StochasticBeam(1, 2)
    params = SamplingParams.create(1.0)
    samples = 4000
    roots = jnp.zeros((samples,), jnp.int32)
    run = lambda k: policy.build(MarkovExpander(jnp.asarray(table), roots), 0, roots, params, k)[0]
    tree = jax.jit(run)(jax.random.key(1))
    seq = np.asarray(tree.tokens[:, 1]) * vocab + np.asarray(tree.tokens[:, 2])
    exact = (q[0][:, None] * q).reshape(-1)
    assert chi_square_pvalue(np.bincount(seq, minlength=vocab**2), exact) > 1e-3


@pytest.mark.parametrize(
    "policy",
    [
        Chain(3),
        Static([[0], [1], [0, 0]]),
        Dynamic(depth=8, top_k=4, total_tokens=8),  # drafts deeper than 8 kept nodes can be
        Dynamic(depth=3, top_k=2, total_tokens=6),
        Sequoia(8, (0.7, 0.2), depth=6),
        SpecExec(budget=6),  # depth 32 by default, 5 at most in 6 nodes
        StochasticBeam(width=2, depth=3),
        Adaptive(depth=4),
    ],
    ids=repr,
)
def test_max_depth_is_reachable_within_max_nodes(policy):
    # Drafters size per-step buffers by max_depth + 1 (the EAGLE head's catch-up, the commit):
    # a policy must not claim more depth than a tree of its max_nodes can have.
    assert 1 <= policy.max_depth <= policy.max_nodes - 1


@pytest.mark.parametrize(
    "policy,chain",
    [
        (Chain(4), True),
        (Adaptive(4), True),
        (StochasticBeam(1, 4), True),
        (Sequoia(6, (0.8, 0.1)), True),
        (Static(paths=((0,), (1,), (0, 0))), False),
        (StochasticBeam(2, 3), False),
        (SpecExec(8, max_beams=2, max_branch_width=2), False),  # last round of 1 node, branching
        (SpecExec(4, max_beams=1, max_branch_width=8), False),
    ],
)
def test_only_chains_are_walked_and_committed_as_paths(policy, chain):
    """The loop's path walk and in-place commit (walk_options, commit_path) are for trees that
    are one path numbered by depth, not for trees with one never-expanded node (max_leaves)."""
    from specdec.engine.loop import walk_options

    assert policy.is_chain == chain
    assert walk_options(policy)["path_only"] == chain
