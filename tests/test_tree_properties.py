"""Property tests (hypothesis) on random trees: ancestor mask, depths, sibling links, compaction."""

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from specdec.cache import KVCache
from specdec.tree import ancestor_mask, sibling_links
from trees import Topology

NODES = 8  # fixed capacity: every example reuses one compiled function


@st.composite
def random_tree(draw):
    """parents (topological: parents[i] < i), valid (closed under ancestors), as numpy."""
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, NODES)]
    valid = [True] + [draw(st.booleans()) for _ in range(1, NODES)]
    for i in range(1, NODES):
        valid[i] = valid[i] and valid[parents[i]]
    return np.array(parents, np.int32), np.array(valid)


def _ancestors(parents, i):
    chain = [i]
    while parents[chain[-1]] >= 0:
        chain.append(int(parents[chain[-1]]))
    return set(chain)


@settings(max_examples=60, deadline=None)
@given(random_tree())
def test_ancestor_mask_and_sibling_links(tree):
    parents, valid = tree
    mask = np.asarray(ancestor_mask(jnp.asarray(parents)[None], jnp.asarray(valid)[None]))[0]
    first, nxt = (
        np.asarray(x)[0]
        for x in sibling_links(jnp.asarray(parents)[None], jnp.asarray(valid)[None])
    )
    for i in range(NODES):
        want = _ancestors(parents, i) if valid[i] else set()
        assert set(np.flatnonzero(mask[i])) == want
        kids = [j for j in range(NODES) if parents[j] == i and valid[j]]
        assert first[i] == (kids[0] if kids else -1)
        sibs = [j for j in range(NODES) if valid[j] and parents[j] == parents[i] and j > i]
        if valid[i] and i > 0:
            assert nxt[i] == (sibs[0] if sibs else -1)


@st.composite
def rank_paths(draw):
    """A prefix-closed, sibling-contiguous set of rank paths (what Static accepts)."""
    paths, frontier = [], [()]
    while frontier and len(paths) < 12:
        node = frontier.pop(0)
        for rank in range(draw(st.integers(0, 3))):
            child = (*node, rank)
            if len(child) <= 4:
                paths.append(child)
                frontier.append(child)
    return [list(p) for p in paths] or [[0]]


@settings(max_examples=60, deadline=None)
@given(rank_paths())
def test_topology_compiles_paths_faithfully(paths):
    topo = Topology.from_paths(paths)
    assert topo.num_nodes == len(paths) + 1
    rebuilt = set()
    for i in range(1, topo.num_nodes):
        assert topo.parents[i] < i and topo.depths[i] == topo.depths[topo.parents[i]] + 1
        path, node = [], i
        while node > 0:
            path.append(topo.ranks[node])
            node = topo.parents[node]
        rebuilt.add(tuple(reversed(path)))
        # siblings are tried in rank order
        sibs = [j for j in range(1, topo.num_nodes) if topo.parents[j] == topo.parents[i]]
        assert [topo.ranks[j] for j in sibs] == sorted(topo.ranks[j] for j in sibs)
    assert rebuilt == {tuple(p) for p in paths}


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_commit_moves_the_kept_path_next_to_the_prefix(data):
    batch, slots, width = 2, 24, 6
    lengths = np.array([data.draw(st.integers(0, slots - width)) for _ in range(batch)], np.int32)
    keep = np.zeros((batch, width), np.int32)
    num_keep = np.zeros(batch, np.int32)
    for b in range(batch):
        chosen = sorted(data.draw(st.sets(st.integers(0, width - 1), max_size=width)))
        keep[b, : len(chosen)] = chosen
        num_keep[b] = len(chosen)
    values = np.arange(batch * slots, dtype=np.float32).reshape(batch, slots, 1, 1) + 1
    cache = KVCache(
        k=(jnp.asarray(values),), v=(jnp.asarray(-values),), lengths=jnp.asarray(lengths)
    )
    out = cache.commit(jnp.asarray(keep), jnp.asarray(num_keep))
    k = np.asarray(out.k[0])[..., 0, 0]
    for b in range(batch):
        n, start = num_keep[b], lengths[b]
        want = values[b, :, 0, 0].copy()
        want[start : start + n] = values[b, start + keep[b, :n], 0, 0]
        np.testing.assert_array_equal(k[b, : start + n], want[: start + n])
        np.testing.assert_array_equal(
            np.asarray(out.v[0])[b, : start + n, 0, 0], -want[: start + n]
        )
    np.testing.assert_array_equal(np.asarray(out.lengths), lengths + num_keep)


# ---- StaticShapePolicy's level-at-once construction against the node-by-node one --------------


def _choose_children_node_by_node(policy, tree, frontier, logits, q, greedy, key):
    """The per-node loop `_choose_children` replaced (same draws, one update per child)."""
    import jax

    from specdec.sampling import sample, sample_without_replacement
    from specdec.tree import ChildKind

    topo = policy.topology
    max_children = max(len(topo.children(int(u))) for u in frontier)
    ranked = min(max_children, logits.shape[-1])
    top_vals, top_tok = jax.lax.top_k(logits, ranked)
    pad = ((0, 0), (0, 0), (0, max_children - ranked))
    top_ok, top_tok = jnp.pad(top_vals > -jnp.inf, pad), jnp.pad(top_tok, pad)
    if policy.child_kind == ChildKind.WITH_REPLACEMENT:
        shape = (*q.shape[:2], max_children, q.shape[2])
        draws = sample(key, jnp.broadcast_to(q[:, :, None, :], shape))
        draws_ok = jnp.ones_like(top_ok)
    elif policy.child_kind == ChildKind.WITHOUT_REPLACEMENT:
        draws, draws_ok = sample_without_replacement(key, q, max_children)
    else:
        draws, draws_ok = top_tok, top_ok
    tokens, valid = tree.tokens, tree.valid
    for f, parent in enumerate(frontier):
        for child in topo.children(int(parent)):
            rank = topo.ranks[child]
            tokens = tokens.at[:, child].set(
                jnp.where(greedy, top_tok[:, f, rank], draws[:, f, rank])
            )
            valid = valid.at[:, child].set(
                jnp.where(greedy, top_ok[:, f, rank], draws_ok[:, f, rank])
            )
    return tokens, valid


@settings(max_examples=30, deadline=None)
@given(
    rank_paths(),
    st.sampled_from(["top", "sample", "sample_without_replacement"]),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_static_levels_are_built_like_node_by_node(paths, children, greedy, seed):
    """Tokens and validity of every level equal the node-by-node construction (the same draws),
    and pruning per depth equals pruning node by node."""
    import jax

    from specdec.sampling import SamplingParams, probabilities
    from specdec.tree import DraftTree
    from trees import Static

    if not paths:
        return
    policy = Static([list(p) for p in paths], children)
    topo, batch, vocab = policy.topology, 2, 5
    rng = np.random.default_rng(seed)
    tree = DraftTree(
        tokens=jnp.zeros((batch, topo.num_nodes), jnp.int32),
        parents=jnp.broadcast_to(jnp.asarray(topo.parents), (batch, topo.num_nodes)),
        depths=jnp.broadcast_to(jnp.asarray(topo.depths), (batch, topo.num_nodes)),
        valid=jnp.ones((batch, topo.num_nodes), bool),
        child_kind=jnp.zeros((batch, topo.num_nodes), jnp.int32),
        draft_probs=None,
    )
    key = jax.random.key(seed)
    for frontier in topo.levels():
        logits = rng.normal(size=(batch, len(frontier), vocab)).astype(np.float32)
        logits[rng.random(logits.shape) < 0.3] = -np.inf  # absent candidates
        logits[..., 0] = 0.0  # every q keeps some mass
        logits = jnp.asarray(logits)
        q = probabilities(logits, SamplingParams.create(1.0))
        key, level_key = jax.random.split(key)
        want = _choose_children_node_by_node(policy, tree, frontier, logits, q, greedy, level_key)
        tree = policy._choose_children(tree, frontier, logits, q, greedy, level_key)
        np.testing.assert_array_equal(np.asarray(tree.tokens), np.asarray(want[0]))
        np.testing.assert_array_equal(np.asarray(tree.valid), np.asarray(want[1]))
    valid = np.asarray(tree.valid).copy()
    for i in range(1, topo.num_nodes):  # node by node, parents first
        valid[:, i] &= valid[:, topo.parents[i]]
    np.testing.assert_array_equal(np.asarray(policy._prune(tree.valid)), valid)
