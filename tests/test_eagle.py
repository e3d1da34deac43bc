"""EAGLE heads and EAGLE-2 dynamic trees: lossless (greedy and statistically), head cache exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stats import stat_pvalue
from stepping import run_steps

import specdec
from drafters import Eagle
from specdec.attention import kernel_slots
from specdec.cache import KVCache, Region
from specdec.contract import DraftContext
from specdec.tree import ChildKind, DraftTree
from trees import Chain, Dynamic, Static

PROMPTS = [[5, 17, 3, 99, 42, 8, 1], [64, 2, 2], [7, 8, 9, 7, 8, 9, 7, 8]]
TREE = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 0, 0]]
POLICIES = {
    "chain": Chain(3),
    "static": Static(TREE),
    "dynamic": Dynamic(depth=3, top_k=3, total_tokens=8),
    # drafts deeper than its 4 nodes can keep: the head's catch-up is sized by the kept depth
    "dynamic_deep": Dynamic(depth=5, top_k=2, total_tokens=4),
}
# llama fixture: 2 layers, vocabulary 128; EAGLE-3 taps within [0, 2), a reduced draft vocabulary
HEADS = {
    "eagle1": dict(version=1),
    "eagle3": dict(version=3, draft_vocab=48, target_layers=(0, 1, 1)),
}


@pytest.fixture(scope="module")
def plain_eos(llama):
    free = specdec.generate(llama, PROMPTS, max_new_tokens=16)
    eos = int(free.tokens[1, 5])
    return eos, specdec.generate(llama, PROMPTS, max_new_tokens=16, eos_token_id=eos)


@pytest.mark.parametrize("policy", ["chain", "static", "dynamic", "dynamic_deep"])
@pytest.mark.parametrize("head", ["eagle1", "eagle3"])
def test_greedy_equals_plain(llama, plain_eos, head, policy):
    eos, plain = plain_eos
    drafter = Eagle.random(llama, seed=1, **HEADS[head])
    out = specdec.generate(
        llama,
        PROMPTS,
        max_new_tokens=16,
        eos_token_id=eos,
        drafter=drafter,
        policy=POLICIES[policy],
    )
    np.testing.assert_array_equal(out.tokens, plain.tokens)
    np.testing.assert_array_equal(out.lengths, plain.lengths)


# ---- a 4-token target: random heads get drafts accepted, so acceptance is ragged ---------------

STAT_TREE = [[0], [1], [2], [0, 0], [1, 0]]
V4_HEADS = {
    "eagle1": dict(version=1),
    "eagle3": dict(version=3, draft_vocab=3, target_layers=(1, 0)),
}


@pytest.mark.parametrize("head,policy", [("eagle1", "static"), ("eagle3", "dynamic")])
def test_greedy_equals_plain_with_ragged_acceptance(vocab4_target, head, policy):
    prompts = [[1, 3, 2, 0, 1], [2], [3, 3, 1]]
    target = vocab4_target
    plain = specdec.generate(target, prompts, max_new_tokens=12, eos_token_id=0)
    drafter = Eagle.random(target, seed=2, **V4_HEADS[head])
    policy = Dynamic(depth=3, top_k=2, total_tokens=6) if policy == "dynamic" else Static(STAT_TREE)
    out = specdec.generate(
        target, prompts, max_new_tokens=12, eos_token_id=0, drafter=drafter, policy=policy
    )
    np.testing.assert_array_equal(out.tokens, plain.tokens)
    np.testing.assert_array_equal(out.lengths, plain.lengths)
    assert out.stats.tau > 1.2  # drafts were accepted


@pytest.mark.slow
@pytest.mark.parametrize(
    "head,policy,sampling",
    [
        ("eagle1", Static(STAT_TREE, "sample"), dict(temperature=0.7, top_k=3)),
        ("eagle3", Static(STAT_TREE, "sample_without_replacement"), dict(temperature=1.0)),
        ("eagle3", Chain(2, "sample"), dict(temperature=1.3, top_p=0.9)),
        ("eagle1", Dynamic(depth=3, top_k=2, total_tokens=6), dict(temperature=1.0)),
        ("eagle3", Dynamic(depth=3, top_k=2, total_tokens=6), dict(temperature=1.0, top_k=3)),
    ],
    ids=[
        "eagle1-iid-t0.7-topk",
        "eagle3-wor-t1",
        "eagle3-chain-t1.3-topp",
        "eagle1-dynamic-t1",
        "eagle3-dynamic-t1-topk",
    ],
)
def test_keeps_the_target_distribution(vocab4_target, head, policy, sampling):
    # seeds whose random heads propose tokens this sharp target often accepts
    drafter = Eagle.random(vocab4_target, seed={"eagle1": 4, "eagle3": 0}[head], **V4_HEADS[head])
    pvalue, tau = stat_pvalue(vocab4_target, drafter, policy, **sampling)
    assert pvalue > 1e-3, f"p={pvalue:.3g}"
    assert tau > 1.03  # thousands of drafts were accepted, so the law was exercised


# ---- the head's cache: incremental catch-up and tree levels == one full forward of the head ----


@jax.jit
def _reference_logits(target, drafter, history, hist_len, child):
    """Root draft logits [B, V] and the logits after `child` [B] (a root child), from causal
    forwards of the whole sequence with no cache.

    Head input at t is [emb(h[t+1]) ; feature t] for t < n = hist_len - 1 (h[n] is the root); the
    child's, at n, is [emb(child) ; the head's own output at n - 1]. Causal attention makes the
    padding after each row's position irrelevant.
    """
    n = hist_len - 1  # [B]
    rows = jnp.arange(n.shape[0])
    ids = history  # [B, Lh]
    width = ids.shape[1]
    out = target.module()(
        ids, jnp.broadcast_to(jnp.arange(width), ids.shape), taps=drafter.target_layers
    )
    feats = drafter._fuse(out.hidden, out.taps)  # [B, width, D]
    tokens = jnp.concatenate([ids[:, 1:], ids[:, :1]], axis=1).at[rows, n].set(child)
    cfg = target.config

    def run(feats):
        cache = KVCache.create(
            len(drafter.head.module().layers),
            n.shape[0],
            kernel_slots(width),
            cfg.num_kv_heads,
            cfg.head_dim,
            jnp.float32,
        )
        pos = jnp.broadcast_to(jnp.arange(width), tokens.shape)
        region = Region.causal(n.shape[0], width)
        return drafter._run(tokens, feats, pos, cache, region, prefix=False)[0]

    root_out = run(feats)[rows, n - 1]  # [B, D]
    child_out = run(feats.at[rows, n].set(root_out))[rows, n]
    return drafter.logits(root_out), drafter.logits(child_out)


@pytest.mark.parametrize("head", ["eagle1", "eagle3"])
def test_head_cache_equals_a_full_forward(llama, head):
    drafter = Eagle.random(llama, seed=5, **HEADS[head])
    policy = Static(TREE)
    states, _ = run_steps(llama, PROMPTS, 10, drafter=drafter, policy=policy)
    for state in states[:3]:
        ctx = DraftContext(
            history=state.history,
            hist_len=state.hist_len,
            vocab_size=128,
            target=llama.net,
            cache=state.cache,
        )
        expander = drafter.expander(ctx, policy)
        root_logits, carried = expander.root(drafter.begin_step(state.drafter_state, ctx, policy))
        child = jnp.argmax(root_logits, axis=-1).astype(jnp.int32)  # [B]
        nodes = policy.max_nodes
        tree = DraftTree(
            tokens=jnp.zeros((3, nodes), jnp.int32).at[:, 1].set(child),
            parents=jnp.full((3, nodes), -1, jnp.int32).at[:, 1].set(0),
            depths=jnp.zeros((3, nodes), jnp.int32).at[:, 1].set(1),
            valid=jnp.zeros((3, nodes), bool).at[:, :2].set(True),
            child_kind=jnp.zeros((3, nodes), jnp.int32),
            draft_probs=None,
        )
        child_logits, _ = expander.expand(carried, tree, jnp.ones((3, 1), jnp.int32))
        want = _reference_logits(llama.net, drafter, state.history, state.hist_len, child)
        for got, expect in zip((root_logits, child_logits[:, 0]), want, strict=True):
            got, expect = np.asarray(got), np.asarray(expect)
            finite = np.isfinite(expect)
            np.testing.assert_array_equal(np.isfinite(got), finite)
            # float32: the cached blocks and the full sequence reduce in different orders
            scale = float(np.abs(expect[finite]).max())
            np.testing.assert_allclose(got[finite], expect[finite], atol=1e-5 * scale, rtol=0)


# ---- EAGLE-2 dynamic trees ---------------------------------------------------------------------


class _TableExpander:
    """Draft logits from a fixed random table indexed by (depth, token) of the node."""

    def __init__(self, table):
        self.table = table  # [depth + 1, V, V]

    def root(self, state):
        return self.table[0, 0][None].repeat(state.shape[0], 0), state

    def expand(self, state, tree, frontier):
        tokens = jnp.take_along_axis(tree.tokens, frontier, axis=1)
        depths = jnp.take_along_axis(tree.depths, frontier, axis=1)
        return self.table[depths, tokens], state


def _eagle2_reference(table, depth, k, total):
    """EAGLE-2's selection in plain Python: {path of tokens: cumulative log-prob}."""
    logp = np.asarray(jax.nn.log_softmax(table, axis=-1), np.float64)
    order = lambda row: np.argsort(-row, kind="stable")[:k]
    cands = {(int(t),): logp[0, 0, t] for t in order(logp[0, 0])}
    frontier = list(cands)
    for level in range(2, depth + 1):
        new = {}
        for path in frontier:
            row = logp[level - 1, path[-1]]
            for t in order(row):
                new[(*path, int(t))] = cands[path] + row[t]
        cands.update(new)
        frontier = sorted(new, key=lambda p: -new[p])[:k]
    return dict(sorted(cands.items(), key=lambda kv: -kv[1])[: total - 1])


def test_dynamic_tree_matches_the_eagle2_selection():
    vocab, depth, k, total = 12, 4, 3, 14
    policy = Dynamic(depth=depth, top_k=k, total_tokens=total)
    for seed in range(3):
        table = jax.random.normal(jax.random.key(seed), (depth + 1, vocab, vocab)) * 2.0
        state = jnp.zeros((2, 1))
        tree, _ = jax.jit(policy.build, static_argnums=0)(
            _TableExpander(table), state, jnp.array([0, 0]), None, jax.random.key(0)
        )
        want = _eagle2_reference(table, depth, k, total)
        assert tree.num_nodes == policy.max_nodes
        for b in range(2):
            parents = np.asarray(tree.parents[b])
            valid = np.asarray(tree.valid[b])
            tokens = np.asarray(tree.tokens[b])
            assert valid.sum() == total and valid[:total].all()
            paths = {}
            for i in range(1, total):
                assert 0 <= parents[i] < i and valid[parents[i]]
                assert tree.depths[b, i] == tree.depths[b, parents[i]] + 1
                paths[i] = (*paths.get(int(parents[i]), ()), int(tokens[i]))
            assert set(paths.values()) == set(want)
            # siblings in rank order: decreasing draft log-probability
            for i in range(1, total):
                for j in range(i + 1, total):
                    if parents[i] == parents[j]:
                        assert want[paths[i]] >= want[paths[j]]
        assert (np.asarray(tree.child_kind) == ChildKind.DETERMINISTIC).all()
        assert tree.draft_probs is None


def test_dynamic_keeps_ancestors_on_ties():
    # Every draft distribution is uniform: all candidates of a level tie, and all levels
    # tie with their children only through the log-probability they add (log 1/V each).
    vocab = 4
    table = jnp.zeros((4, vocab, vocab))
    policy = Dynamic(depth=3, top_k=2, total_tokens=5)
    tree, _ = policy.build(_TableExpander(table), jnp.zeros((1, 1)), jnp.array([0]), None, None)
    parents, valid = np.asarray(tree.parents[0]), np.asarray(tree.valid[0])
    assert valid[:5].all()
    assert all(0 <= parents[i] < i for i in range(1, 5))
    # and a certain draft (probability 1 in float32: log-prob exactly 0) ties parent and child
    certain = jnp.full((4, vocab, vocab), -1e9).at[:, :, 1].set(0.0)
    tree, _ = policy.build(_TableExpander(certain), jnp.zeros((1, 1)), jnp.array([0]), None, None)
    parents = np.asarray(tree.parents[0])
    assert all(0 <= parents[i] < i for i in range(1, 5))


def test_dynamic_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="children='top'"):
        Dynamic(children="sample")
    with pytest.raises(ValueError, match="total_tokens"):
        Dynamic(depth=2, top_k=2, total_tokens=8)
    with pytest.raises(ValueError, match="top_k=10 exceeds"):
        Dynamic().check(4)
    # verifies the 60 nodes it keeps; drafts a working tree of 1 + 6 x 10 = 61
    assert Dynamic().max_nodes == 60 and Dynamic().draft_nodes == 61 and Dynamic().max_depth == 7
    assert Dynamic(depth=8, top_k=4, total_tokens=8).max_depth == 7  # 8 kept nodes: 7 deep


def test_eagle_rejects_bad_options(llama):
    with pytest.raises(ValueError, match="version"):
        Eagle.random(llama, version=2)
    with pytest.raises(ValueError, match="EAGLE-3 options"):
        Eagle.random(llama, version=1, draft_vocab=10)
    with pytest.raises(ValueError, match="target_layers"):
        Eagle.random(llama, version=3, target_layers=(0, 5))
    assert Eagle.random(llama, version=3).target_layers == (1, 0, 0)


# ---- the public EAGLE layout ------------------------------------------------------------------


@pytest.mark.parametrize("head", ["eagle1", "eagle3"])
def test_save_load_round_trip(llama, plain_eos, head, tmp_path):
    from safetensors.numpy import load_file

    drafter = Eagle.random(llama, seed=6, **HEADS[head])
    drafter.save(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    if head == "eagle3":
        d = llama.config.hidden_size
        assert tensors["fc.weight"].shape == (d, 3 * d)
        assert tensors["midlayer.self_attn.q_proj.weight"].shape == (4 * 16, 2 * d)
        assert tensors["midlayer.hidden_norm.weight"].shape == (d,)
        assert tensors["lm_head.weight"].shape == (48, d)
        ids = np.asarray(drafter.draft_ids)
        np.testing.assert_array_equal(tensors["d2t"] + np.arange(48), ids)
        assert tensors["t2d"].sum() == 48 and tensors["t2d"][ids].all()
        assert not any(name.startswith("layers.") for name in tensors)
    else:
        assert tensors["fc.weight"].shape == (64, 128) and "fc.bias" in tensors
        assert "layers.0.input_layernorm.weight" not in tensors  # EAGLE-1 drops it
    loaded = Eagle.load(tmp_path, llama)
    assert (loaded.version, loaded.target_layers) == (drafter.version, drafter.target_layers)
    np.testing.assert_array_equal(np.asarray(loaded.draft_ids), np.asarray(drafter.draft_ids))
    for a, b in zip(
        jax.tree.leaves(drafter.head.params), jax.tree.leaves(loaded.head.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    eos, plain = plain_eos
    out = specdec.generate(
        llama, PROMPTS, max_new_tokens=16, eos_token_id=eos, drafter=loaded, policy=Chain(3)
    )
    np.testing.assert_array_equal(out.tokens, plain.tokens)


def test_load_rejects_a_head_for_another_target(llama, tmp_path):
    import json

    Eagle.random(llama, version=3).save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_size": 32}))
    with pytest.raises(ValueError, match="hidden_size=32"):
        Eagle.load(tmp_path, llama)


def test_public_eagle3_fixture_loads_with_identical_logits(llama, fixtures_dir):
    """A head written by tests/fixtures/make_eagle3_fixture.py (torch, the EAGLE-3 reference's
    forward) gives the same draft logits here."""
    directory = fixtures_dir.parent / "eagle3_head"
    ref = np.load(directory / "reference.npz")
    drafter = Eagle.load(directory, llama)
    assert drafter.version == 3 and drafter.target_layers == (0, 1, 1)
    assert drafter.head.module().layers[0].mlp.gate_up.shape == (64, 2, 96)  # the head's own width
    tokens, taps = jnp.asarray(ref["tokens"]), jnp.asarray(ref["taps"])
    length = tokens.shape[1]
    feats = drafter._fuse(None, tuple(jnp.split(taps, 3, axis=-1)))
    cache = KVCache.create(1, 1, kernel_slots(length), 2, 16, jnp.float32)
    pos = jnp.arange(length)[None]
    x, _ = drafter._run(tokens, feats, pos, cache, Region.causal(1, length), prefix=False)
    logits = np.asarray(drafter.logits(x))  # [1, S, V]
    ids = np.asarray(drafter.draft_ids)
    np.testing.assert_allclose(logits[..., ids], ref["logits"], atol=1e-4, rtol=1e-4)
    outside = np.setdiff1d(np.arange(128), ids)
    assert np.isneginf(logits[..., outside]).all()
