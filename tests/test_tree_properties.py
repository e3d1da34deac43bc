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
