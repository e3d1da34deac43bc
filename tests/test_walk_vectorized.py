"""The static-trip-count verify walk, its loop-free path version and the pointer-jumping ancestor
mask equal straightforward references (`verify_reference`, the data-dependent while_loop walk; a
row-by-row mask) bit for bit on random trees."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stats import chi_square_pvalue

import specdec
from drafters import DraftModel
from specdec.config import tiny_config
from specdec.engine.generate import prepare
from specdec.engine.loop import decode_loop
from specdec.sampling import SamplingParams, probabilities
from specdec.tree import ChildKind, DraftTree, ancestor_mask
from specdec.verify import verify, verify_reference
from trees import Chain

NODES = 10  # fixed capacity (> verify.UNROLL_MAX + 1, so the rolled loop is exercised too)
CHAIN = 5  # a chain's capacity (unrolled walk)
BATCH = 3
VOCAB = 6  # small, so random trees accept and reject often


def reference_ancestor_mask(parents: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """bool [B, T, T]: row i = node i and its ancestors, following parents one by one."""
    batch, nodes = parents.shape
    mask = np.zeros((batch, nodes, nodes), bool)
    for b in range(batch):
        for i in range(nodes):
            node = i
            while node >= 0:
                mask[b, i, node] = True
                node = parents[b, node]
    return mask & valid[:, :, None] & valid[:, None, :]


reference_verify = jax.jit(verify_reference)
_verify = jax.jit(verify, static_argnames=("path_only", "point_masses"))
_mask = jax.jit(ancestor_mask)


@st.composite
def random_trees(draw, nodes: int = NODES, chain: bool = False):
    """Numpy parents [B, T] (topological), valid [B, T] (closed under ancestors), tokens, kinds."""
    parents = np.full((BATCH, nodes), -1, np.int32)
    valid = np.ones((BATCH, nodes), bool)
    for b in range(BATCH):
        for i in range(1, nodes):
            parents[b, i] = i - 1 if chain else draw(st.integers(0, i - 1))
            valid[b, i] = draw(st.booleans()) and valid[b, parents[b, i]]
    if draw(st.booleans()):  # some padding that points at no parent, as policies leave it
        parents = np.where(valid, parents, -1)
    seed = draw(st.integers(0, 2**31 - 1))
    return parents, valid, seed


def _tree(parents, valid, seed, with_q: bool, kinds_choice) -> tuple[DraftTree, jax.Array]:
    rng = np.random.default_rng(seed)
    batch, nodes = parents.shape
    logits = rng.normal(size=(batch, nodes, VOCAB)).astype(np.float32) * 2.0
    tokens = rng.integers(0, VOCAB, (batch, nodes)).astype(np.int32)
    kinds = rng.choice(np.asarray(kinds_choice, np.int32), (batch, nodes))
    draft_probs = None
    if with_q:
        raw = rng.exponential(size=(batch, nodes, VOCAB)) * (
            rng.random((batch, nodes, VOCAB)) > 0.3
        )
        raw[..., 0] += 1e-3  # every q has some mass
        draft_probs = jnp.asarray((raw / raw.sum(-1, keepdims=True)).astype(np.float32))
    tree = DraftTree(
        tokens=jnp.asarray(tokens),
        parents=jnp.asarray(parents),
        depths=jnp.zeros((batch, nodes), jnp.int32),  # the walk does not read depths
        valid=jnp.asarray(valid),
        child_kind=jnp.asarray(kinds),
        draft_probs=draft_probs,
    )
    return tree, jnp.asarray(logits)


@settings(max_examples=40, deadline=None)
@given(random_trees())
def test_ancestor_mask_equals_reference(tree):
    parents, valid, _ = tree
    got = np.asarray(_mask(jnp.asarray(parents), jnp.asarray(valid)))
    np.testing.assert_array_equal(got, reference_ancestor_mask(parents, valid))


def test_ancestor_mask_deep_chain_and_single_node():
    for nodes in (1, 2, 3, 17, 64):
        parents = np.arange(nodes, dtype=np.int32)[None] - 1
        valid = np.ones((1, nodes), bool)
        got = np.asarray(ancestor_mask(jnp.asarray(parents), jnp.asarray(valid)))
        np.testing.assert_array_equal(got, reference_ancestor_mask(parents, valid))


PARAMS = [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.8)]
KINDS = [
    (ChildKind.DETERMINISTIC,),
    (ChildKind.WITH_REPLACEMENT,),
    (ChildKind.WITHOUT_REPLACEMENT,),
    tuple(ChildKind),
]


def _check_walk(parents, valid, seed, with_q, kinds_choice, sampling, path_only=False):
    tree, logits = _tree(parents, valid, seed, with_q, kinds_choice)
    params = SamplingParams.create(*sampling)
    key = jax.random.key(seed)
    got = _verify(tree, logits, params, key, path_only=path_only)
    want = reference_verify(tree, logits, params, key)
    np.testing.assert_array_equal(np.asarray(got.num_accepted), np.asarray(want.num_accepted))
    np.testing.assert_array_equal(np.asarray(got.bonus), np.asarray(want.bonus))
    # the path is defined up to num_accepted; both leave zeros past it
    np.testing.assert_array_equal(np.asarray(got.path), np.asarray(want.path))


@settings(max_examples=40, deadline=None)
@given(
    random_trees(),
    st.booleans(),
    st.sampled_from(KINDS),
    st.sampled_from(PARAMS),
)
def test_static_walk_equals_while_walk_on_trees(tree, with_q, kinds_choice, sampling):
    _check_walk(*tree, with_q, kinds_choice, sampling)


@settings(max_examples=20, deadline=None)
@given(
    random_trees(nodes=CHAIN, chain=True),
    st.booleans(),
    st.sampled_from(KINDS),
    st.sampled_from(PARAMS),
)
def test_static_walk_equals_while_walk_on_chains(tree, with_q, kinds_choice, sampling):
    _check_walk(*tree, with_q, kinds_choice, sampling)


@settings(max_examples=40, deadline=None)
@given(
    random_trees(nodes=CHAIN, chain=True),
    st.booleans(),
    st.sampled_from(KINDS),
    st.sampled_from(PARAMS),
)
def test_loop_free_path_walk_equals_while_walk_on_chains(tree, with_q, kinds_choice, sampling):
    _check_walk(*tree, with_q, kinds_choice, sampling, path_only=True)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.booleans(), st.sampled_from(PARAMS))
def test_loop_free_path_walk_on_a_greedy_chain_that_accepts(seed, with_q, sampling):
    """Drafts equal to the target's argmax: long accepted runs, the bonus after the leaf."""
    parents = np.broadcast_to(np.arange(CHAIN, dtype=np.int32) - 1, (BATCH, CHAIN)).copy()
    valid = np.ones((BATCH, CHAIN), bool)
    tree, logits = _tree(parents, valid, seed, with_q, KINDS[0])
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # node i's token: parent's argmax
    tree = dataclasses.replace(tree, tokens=jnp.roll(tokens, 1, axis=1))
    params = SamplingParams.create(*sampling)
    key = jax.random.key(seed)
    got = _verify(tree, logits, params, key, path_only=True)
    want = reference_verify(tree, logits, params, key)
    np.testing.assert_array_equal(np.asarray(got.num_accepted), np.asarray(want.num_accepted))
    np.testing.assert_array_equal(np.asarray(got.bonus), np.asarray(want.bonus))
    np.testing.assert_array_equal(np.asarray(got.path), np.asarray(want.path))


def test_root_only_tree_samples_the_bonus_from_the_root():
    parents = np.full((BATCH, 1), -1, np.int32)
    valid = np.ones((BATCH, 1), bool)
    for sampling in PARAMS:
        _check_walk(parents, valid, 3, False, KINDS[0], sampling)


def _data_dependent_whiles(drafter=None, policy=None) -> int:
    """While loops in the compiled decode loop whose trip count XLA cannot prove."""
    target = specdec.Model.random(tiny_config(vocab_size=64), seed=0)
    prepared = prepare(target, [[1, 2, 3]], max_new_tokens=8, drafter=drafter, policy=policy)
    loop = jax.jit(decode_loop, static_argnames=("policy", "shape"))
    hlo = (
        loop.lower(*prepared.args, policy=prepared.policy, shape=prepared.shape).compile().as_text()
    )
    whiles = re.findall(r"= .*? while\(.*", hlo)
    return sum("known_trip_count" not in w for w in whiles)


def test_one_data_dependent_loop_per_decode():
    """Only the outer decode loop waits for its predicate (on GPU, a host round trip per
    iteration): the verify walk and the ancestor mask have static trip counts."""
    assert _data_dependent_whiles() == 1
    draft = specdec.Model.random(tiny_config(vocab_size=64, num_layers=1), seed=1)
    assert _data_dependent_whiles(DraftModel(draft), Chain(4)) == 1


# ---- the loop-free walk for point-mass children ------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(random_trees(), st.integers(0, 2**31 - 1))
def test_point_mass_walk_equals_while_walk_at_temperature_zero(tree, key_seed):
    """Greedy: the same verdicts as the data-dependent walk, bit for bit (repeated sibling tokens
    included: VOCAB is small)."""
    parents, valid, seed = tree
    tree, logits = _tree(parents, valid, seed, False, KINDS[0])
    params, key = SamplingParams.create(0.0), jax.random.key(key_seed)
    got = _verify(tree, logits, params, key, point_masses=True)
    want = reference_verify(tree, logits, params, key)
    np.testing.assert_array_equal(np.asarray(got.num_accepted), np.asarray(want.num_accepted))
    np.testing.assert_array_equal(np.asarray(got.bonus), np.asarray(want.bonus))
    np.testing.assert_array_equal(np.asarray(got.path), np.asarray(want.path))


# root -> children 1, 2, 3 (+ a repeat of 1's token at 4); 1 -> 5, 6; 5 -> 7; 2 -> 8 (invalid)
LAW_PARENTS = np.array([-1, 0, 0, 0, 0, 1, 1, 5, 2], np.int32)
LAW_VALID = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0], bool)


def _law_tree(params: SamplingParams):
    """A fixed tree whose siblings carry the target's most probable tokens, and its probs."""
    rng = np.random.default_rng(7)
    nodes = len(LAW_PARENTS)
    logits = jnp.asarray(rng.normal(size=(nodes, VOCAB)).astype(np.float32) * 1.5)
    probs = np.asarray(probabilities(logits, params), np.float64)  # [T, V]
    tokens = np.zeros(nodes, np.int32)
    for parent in range(nodes):
        kids = [j for j in range(nodes) if LAW_PARENTS[j] == parent]
        ranked = np.argsort(-probs[parent])
        for rank, j in enumerate(kids):
            tokens[j] = ranked[rank]
    tokens[4] = tokens[1]  # a repeated sibling token: tried once
    return tokens, logits, probs


def _exact_emitted_law(tokens, probs) -> dict:
    """P(emitted tokens = s): accept the child holding t with p(t), else t is the bonus."""
    law = {}

    def visit(node, prefix, mass):
        kids = {}
        for j in range(len(tokens)):
            if LAW_PARENTS[j] == node and LAW_VALID[j]:
                kids.setdefault(int(tokens[j]), j)  # the first sibling holding the token
        for t in range(VOCAB):
            if t in kids:
                visit(kids[t], (*prefix, t), mass * probs[node, t])
            else:
                law[(*prefix, t)] = law.get((*prefix, t), 0.0) + mass * probs[node, t]

    visit(0, (), 1.0)
    return law


def _walk_law_pvalue(sampling, samples: int = 20_000) -> float:
    params = SamplingParams.create(*sampling)
    tokens, logits, probs = _law_tree(params)
    nodes = len(tokens)
    tree = DraftTree(
        tokens=jnp.broadcast_to(jnp.asarray(tokens), (samples, nodes)),
        parents=jnp.broadcast_to(jnp.asarray(LAW_PARENTS), (samples, nodes)),
        depths=jnp.zeros((samples, nodes), jnp.int32),
        valid=jnp.broadcast_to(jnp.asarray(LAW_VALID), (samples, nodes)),
        child_kind=jnp.full((samples, nodes), ChildKind.DETERMINISTIC, jnp.int32),
        draft_probs=None,
    )
    walk = jax.jit(lambda t, lg, k: verify(t, lg, params, k, point_masses=True))  # fresh trace
    verdict = walk(tree, jnp.broadcast_to(logits, (samples, nodes, VOCAB)), jax.random.key(0))
    emitted = np.asarray(verdict.emitted(tree))
    n = np.asarray(verdict.num_accepted)
    law = _exact_emitted_law(tokens, probs)
    index = {s: i for i, s in enumerate(law)}
    counts = np.zeros(len(law))
    for row, k in zip(emitted, n, strict=True):
        counts[index[tuple(int(x) for x in row[: k + 1])]] += 1  # KeyError: an impossible output
    return chi_square_pvalue(counts, np.array(list(law.values())))


WALK_SAMPLING = [(0.7, 4, 1.0), (1.0, 0, 1.0), (1.3, 0, 0.9)]


@pytest.mark.parametrize("sampling", WALK_SAMPLING)
def test_point_mass_walk_emits_the_target_law(sampling):
    assert _walk_law_pvalue(sampling) > 1e-3


def test_point_mass_walk_law_test_catches_a_wrong_rule(monkeypatch):
    """Accepting a later sibling with p(x) instead of p(x) / (1 - earlier siblings' mass) (the
    un-renormalised residual) under-accepts it: the law test must fail."""
    import specdec.verify

    monkeypatch.setattr(specdec.verify, "_point_mass_accept_probs", lambda px, before: px)
    assert _walk_law_pvalue(WALK_SAMPLING[1]) < 1e-6


# ---- the walk in sibling rounds over all nodes (any child kinds) ------------------------------


def _max_children(parents, valid) -> int:
    counts = [
        np.sum((parents[b] == u) & valid[b] & (np.arange(parents.shape[1]) > 0))
        for b in range(parents.shape[0])
        for u in range(parents.shape[1])
    ]
    return max(1, int(max(counts)))


@settings(max_examples=40, deadline=None)
@given(random_trees(), st.booleans(), st.sampled_from(KINDS), st.integers(0, 3))
def test_by_node_walk_equals_while_walk_at_temperature_zero(tree, with_q, kinds_choice, extra):
    """Greedy: the same verdicts as the data-dependent walk, for every child kind, with the
    tight bound on children and with a looser one."""
    parents, valid, seed = tree
    tree, logits = _tree(parents, valid, seed, with_q, kinds_choice)
    params, key = SamplingParams.create(0.0), jax.random.key(seed)
    bound = _max_children(parents, valid) + extra
    got = jax.jit(lambda t, lg, k: verify(t, lg, params, k, max_children=bound))(tree, logits, key)
    want = reference_verify(tree, logits, params, key)
    np.testing.assert_array_equal(np.asarray(got.num_accepted), np.asarray(want.num_accepted))
    np.testing.assert_array_equal(np.asarray(got.bonus), np.asarray(want.bonus))
    np.testing.assert_array_equal(np.asarray(got.path), np.asarray(want.path))


def _exact_walk_law(tokens, kinds, q_all, probs) -> dict:
    """P(emitted = s) for the fixed LAW tree under the module docstring's rules, in float64."""
    law = {}

    def normalized(x, fallback):
        return x / x.sum() if x.sum() > 0 else fallback

    def visit(node, prefix, mass):
        p, q, kind = probs[node].copy(), q_all[node].copy(), kinds[node]
        sampled = kind != ChildKind.DETERMINISTIC
        for j in range(len(tokens)):
            if LAW_PARENTS[j] != node or not LAW_VALID[j]:
                continue
            x = int(tokens[j])
            if sampled and q[x] <= 0:
                continue  # a draw from q cannot be x: the candidate is absent
            a = min(1.0, p[x] / q[x]) if sampled else p[x]
            if a > 0:
                visit(j, (*prefix, x), mass * a)
            mass *= 1.0 - a
            residual = np.maximum(p - q, 0.0) if sampled else np.where(np.arange(VOCAB) == x, 0, p)
            p = normalized(residual, p)
            if kind == ChildKind.WITHOUT_REPLACEMENT:
                q = normalized(np.where(np.arange(VOCAB) == x, 0.0, q), q)
        for t in range(VOCAB):
            law[(*prefix, t)] = law.get((*prefix, t), 0.0) + mass * p[t]

    visit(0, (), 1.0)
    return law


LAW_KINDS = {
    "with": [ChildKind.WITH_REPLACEMENT] * len(LAW_PARENTS),
    "without": [ChildKind.WITHOUT_REPLACEMENT] * len(LAW_PARENTS),
    "mixed": [2, 1, 0, 2, 1, 2, 0, 1, 2],
}


def _sampled_walk_pvalue(kinds_name, sampling, walk="by_node", samples: int = 20_000) -> float:
    params = SamplingParams.create(*sampling)
    rng = np.random.default_rng(11)
    nodes = len(LAW_PARENTS)
    kinds = np.asarray(LAW_KINDS[kinds_name], np.int32)
    logits = jnp.asarray(rng.normal(size=(nodes, VOCAB)).astype(np.float32) * 1.5)
    probs = np.asarray(probabilities(logits, params), np.float64)
    # An over-confident draft (sharper than the target): its likeliest tokens are accepted with
    # probability p / q < 1, so every walk mixes acceptances and rejections; a little noise
    # keeps q > 0 everywhere.
    noise = rng.exponential(size=(nodes, VOCAB))
    q_all = np.asarray(jax.nn.softmax(2.5 * logits)) + 0.05 * noise / noise.sum(-1, keepdims=True)
    q_all = (q_all / q_all.sum(-1, keepdims=True)).astype(np.float32)
    tokens = np.zeros(nodes, np.int32)  # each node's children: its q's likeliest tokens
    for parent in range(nodes):
        kids = [j for j in range(nodes) if LAW_PARENTS[j] == parent]
        tokens[kids] = np.argsort(-q_all[parent])[: len(kids)]
    tokens[4] = tokens[3]  # a repeated sibling token (unusable once drawn without replacement)
    tile = lambda x: jnp.broadcast_to(jnp.asarray(x), (samples, *np.shape(x)))
    tree = DraftTree(
        tokens=tile(tokens),
        parents=tile(LAW_PARENTS),
        depths=jnp.zeros((samples, nodes), jnp.int32),
        valid=tile(LAW_VALID),
        child_kind=tile(kinds),
        draft_probs=tile(q_all),
    )
    run = verify_reference if walk == "reference" else verify
    options = {} if walk == "reference" else {"max_children": 4}
    verdict = jax.jit(lambda t, lg, k: run(t, lg, params, k, **options))(
        tree, tile(logits), jax.random.key(1)
    )  # a fresh trace: a patched helper is seen
    emitted = np.asarray(verdict.emitted(tree))
    n = np.asarray(verdict.num_accepted)
    law = _exact_walk_law(tokens, kinds, q_all.astype(np.float64), probs)
    index = {s: i for i, s in enumerate(law)}
    counts = np.zeros(len(law))
    for row, k in zip(emitted, n, strict=True):
        counts[index[tuple(int(x) for x in row[: k + 1])]] += 1  # KeyError: an impossible output
    return chi_square_pvalue(counts, np.array(list(law.values())))


@pytest.mark.parametrize("kinds_name", list(LAW_KINDS))
@pytest.mark.parametrize("sampling", WALK_SAMPLING)
def test_by_node_walk_emits_the_walk_law(kinds_name, sampling):
    """Sampled children (i.i.d., without replacement, mixed with point masses), repeated tokens:
    the emitted sequences follow the sequential rule's law, computed exactly."""
    assert _sampled_walk_pvalue(kinds_name, sampling) > 1e-3


def test_the_exact_walk_law_is_the_reference_walks():
    """The law the test uses is the data-dependent walk's (so the test checks the rule itself)."""
    assert _sampled_walk_pvalue("mixed", WALK_SAMPLING[1], walk="reference") > 1e-3


def test_by_node_walk_law_test_catches_a_wrong_rule(monkeypatch):
    """Accepting sampled children with p(x) (the point-mass rule) is wrong for draws from q."""
    import specdec.verify

    monkeypatch.setattr(specdec.verify, "_accept_probs", lambda px, qx, sampled: px)
    assert _sampled_walk_pvalue("without", WALK_SAMPLING[1]) < 1e-6
