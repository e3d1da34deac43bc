"""The drafter contract: layering, target features reaching drafters, self-drafters reusing work."""

import ast
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from feature_drafter import FeatureProjection
from stats import stat_pvalue
from stepping import run_steps

import specdec
from drafters import DraftModel, EarlyExit
from specdec.cache import Region
from specdec.contract import Drafter, PrefillInputs, StepOutcome
from specdec.engine.generate import prepare
from specdec.engine.loop import verify_forward
from trees import Chain, Static

ROOT = Path(__file__).parent.parent
PROMPTS = [[5, 17, 3, 99, 42, 8, 1], [64, 2, 2], [7, 8, 9, 7, 8, 9, 7, 8]]
TREE = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 0, 0]]


# ---- layering -----------------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_modules_import_no_drafter_policy_or_engine():
    engine = {"__init__.py", "__main__.py", "cli.py"}  # the package face and the CLI: top layer
    core = [p for p in (ROOT / "specdec").glob("*.py") if p.name not in engine]
    assert len(core) >= 10
    for path in core:
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in {"drafters", "trees", "train", "experiments"}, (path.name, name)
            assert not name.startswith(("specdec.engine", "specdec.cli")), (path.name, name)


def test_implementations_import_the_core_not_the_engine():
    # trees/measure.py runs the decode loop to measure acceptance and timings: a tool above the
    # engine, not a policy. Every other drafter and policy module implements the contract only.
    tools = {"measure.py"}
    for folder in ("drafters", "trees"):
        for path in (ROOT / folder).glob("*.py"):
            if path.name in tools:
                continue
            for name in _imports(path):
                assert not name.startswith(("specdec.engine", "specdec.cli")), (path, name)


# ---- target features reach drafters -------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Recorder(Drafter):
    """Wraps a drafter; records the target features it is given at each history position."""

    inner: Drafter
    target_layers: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    width: int = dataclasses.field(metadata=dict(static=True))
    length: int = dataclasses.field(metadata=dict(static=True))

    @property
    def vocab_size(self):
        return self.inner.vocab_size

    def init_state(self, batch, capacity, policy):
        taps = len(self.target_layers) + 1
        record = jnp.full((batch, taps, self.length, self.width), jnp.nan, jnp.float32)
        return self.inner.init_state(batch, capacity, policy), record

    def prefill(self, state, inputs: PrefillInputs):
        inner, record = state
        feats = jnp.stack([inputs.features.hidden, *inputs.features.layers], axis=1)  # [B,X,P,D]
        pos = jnp.arange(feats.shape[2])
        keep = pos[None, None, :, None] < inputs.prompt_lens[:, None, None, None]
        record = record.at[:, :, : feats.shape[2]].set(jnp.where(keep, feats, jnp.nan))
        return self.inner.prefill(inner, inputs), record

    def expander(self, ctx, policy):
        inner_expander = self.inner.expander(ctx, policy)

        class Wrapped:
            def root(self, state):
                logits, inner = inner_expander.root(state[0])
                return logits, (inner, state[1])

            def expand(self, state, tree, frontier):
                logits, inner = inner_expander.expand(state[0], tree, frontier)
                return logits, (inner, state[1])

        return Wrapped()

    def observe(self, state, ctx, outcome: StepOutcome):
        inner, record = state
        feats = jnp.stack([outcome.features.hidden, *outcome.features.layers], axis=1)  # [B,X,T,D]
        path = outcome.verdict.path  # [B, T]
        on_path = jnp.take_along_axis(feats, path[:, None, :, None], axis=2)  # [B, X, T, D]
        index = jnp.arange(path.shape[1])[None, :]
        dest = jnp.where(index < outcome.committed[:, None], ctx.hist_len[:, None] - 1 + index, -1)
        dest = jnp.where(dest >= 0, dest, self.length)  # dropped
        rows = jnp.arange(path.shape[0])[:, None]
        record = record.at[rows, :, dest].set(jnp.moveaxis(on_path, 1, 2), mode="drop")
        return self.inner.observe(inner, ctx, outcome), record


@pytest.mark.parametrize("drafter_name", ["self", "poor"])
def test_features_equal_a_full_forward_for_prompt_and_accepted_paths(
    llama, tiny_draft, drafter_name
):
    inner = DraftModel(llama if drafter_name == "self" else tiny_draft)
    layers = (0, 1)
    states, _ = run_steps(
        llama,
        PROMPTS,
        14,
        drafter=Recorder(inner, layers, llama.config.hidden_size, 64),
        policy=Static(TREE),
    )
    final = states[-1]
    accepted = np.asarray(final.accept_hist).sum(axis=0)
    if drafter_name == "self":
        assert accepted[4] > 0  # rows that accepted every draft of the deepest path
    else:
        assert accepted[0] > 0  # rows that accepted nothing
    record = np.asarray(final.drafter_state[1])  # [B, X, 64, D]
    module = llama.module()
    for b in range(3):
        n = int(final.hist_len[b]) - 1  # positions whose features exist (all but the root)
        ids = jnp.asarray(final.history[b : b + 1, :n])
        out = module(ids, jnp.arange(n)[None], taps=layers)
        expect = np.stack([np.asarray(out.hidden[0]), *[np.asarray(t[0]) for t in out.taps]])
        # float32, to 1e-5 of each feature's scale: the cached blocks and the full sequence reduce
        # in different orders, a few ulps of the largest entry apart
        for got, want in zip(record[b, :, :n], expect, strict=True):
            scale = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(got, want, atol=1e-5 * scale, rtol=0)
        assert np.isnan(record[b, :, n:]).all()  # nothing recorded beyond the history


# ---- drafters that use features are lossless ----------------------------------------------------


@pytest.fixture(scope="module")
def plain_eos(llama):
    free = specdec.generate(llama, PROMPTS, max_new_tokens=16)
    eos = int(free.tokens[1, 5])
    return eos, specdec.generate(llama, PROMPTS, max_new_tokens=16, eos_token_id=eos)


@pytest.mark.parametrize(
    "policy,layers", [(Chain(3), ()), (Static(TREE), (1,)), (Static(TREE, "sample"), ())]
)
def test_feature_drafter_greedy_equals_plain(llama, plain_eos, policy, layers):
    eos, plain = plain_eos
    drafter = FeatureProjection.random(llama.config.hidden_size, 128, seed=3, layers=layers)
    out = specdec.generate(
        llama, PROMPTS, max_new_tokens=16, eos_token_id=eos, drafter=drafter, policy=policy
    )
    np.testing.assert_array_equal(out.tokens, plain.tokens)
    np.testing.assert_array_equal(out.lengths, plain.lengths)


# ---- self-drafters run part of the target and hand the verify forward what they computed -------


@pytest.mark.parametrize("exit_layer,reuse", [(1, True), (1, False)])
@pytest.mark.parametrize("policy", [Chain(3), Static(TREE)])
def test_early_exit_greedy_equals_plain(llama, plain_eos, exit_layer, reuse, policy):
    eos, plain = plain_eos
    out = specdec.generate(
        llama,
        PROMPTS,
        max_new_tokens=16,
        eos_token_id=eos,
        drafter=EarlyExit(exit_layer, reuse=reuse),
        policy=policy,
    )
    np.testing.assert_array_equal(out.tokens, plain.tokens)
    np.testing.assert_array_equal(out.lengths, plain.lengths)


def test_reused_verify_forward_equals_a_full_forward_of_the_tree(llama):
    """Verify logits with the draft's layers [0, E) reused == an ordinary forward of the tree."""
    states, _ = run_steps(llama, PROMPTS, 6, drafter=EarlyExit(1), policy=Static(TREE))
    state = states[1]  # after one step: a non-trivial prefix in the cache
    prepared = prepare(llama, PROMPTS, max_new_tokens=6, drafter=EarlyExit(1), policy=Static(TREE))
    drafter, policy, params = prepared.args[1], prepared.policy, prepared.args[7]
    from specdec.contract import DraftContext

    ctx = DraftContext(
        history=state.history,
        hist_len=state.hist_len,
        vocab_size=128,
        target=llama.net,
        cache=state.cache,
    )
    root = state.history[jnp.arange(3), state.hist_len - 1]
    carried = drafter.begin_step((), ctx, policy)
    expander = drafter.expander(ctx, policy)
    tree, carried = policy.build(expander, carried, root, params, jax.random.key(0))
    handoff = drafter.end_step(carried, ctx)
    assert handoff.reuse.pending == policy.max_leaves < policy.max_nodes
    module = llama.module()
    reused, _, _ = verify_forward(module, tree, handoff.cache, handoff.reuse, ())
    full, _, _ = verify_forward(module, tree, state.cache, None, ())
    np.testing.assert_allclose(
        np.asarray(module.logits(reused)), np.asarray(module.logits(full)), atol=1e-5, rtol=0
    )
    # and the ordinary tree forward equals a plain causal forward of each root-to-node path
    mask = np.asarray(tree.ancestor_mask())
    for b in range(3):
        prefix = np.asarray(state.history[b, : int(state.cache.lengths[b])])
        for node in range(tree.num_nodes):
            path = np.asarray(tree.tokens[b])[mask[b, node]]
            ids = jnp.asarray(np.concatenate([prefix, path]))[None]
            ref = module(ids, jnp.arange(ids.shape[1])[None]).hidden[0, -1]
            np.testing.assert_allclose(
                np.asarray(full[b, node]), np.asarray(ref), atol=1e-5, rtol=0
            )


def test_region_writes_of_a_layer_range_land_where_the_verify_forward_puts_them(llama):
    """run_layers(stop=E) on a block == the first E layers of the full forward."""
    module = llama.module()
    ids = jnp.asarray([PROMPTS[0]])
    pos = jnp.arange(ids.shape[1])[None]
    x, _, _ = module.run_layers(module.embed_tokens(ids), pos, stop=1, taps=(0,))
    full = module(ids, pos, taps=(0,))
    np.testing.assert_allclose(np.asarray(x), np.asarray(full.taps[0]), atol=1e-6)
    rest, _, _ = module.run_layers(x, pos, start=1)
    np.testing.assert_allclose(np.asarray(module.norm(rest)), np.asarray(full.hidden), atol=1e-6)
    with pytest.raises(ValueError, match="layer range"):
        module.run_layers(x, pos, start=2, stop=1)
    assert Region.causal(1, 2).width == 2


# ---- and keep the target's distribution at T > 0 -----------------------------------------------

STAT_TREE = [[0], [1], [2], [0, 0], [1, 0]]


@pytest.mark.slow
@pytest.mark.parametrize(
    "children,sampling",
    [
        ("sample", dict(temperature=0.7, top_k=3)),
        ("sample_without_replacement", dict(temperature=1.0)),
        ("top", dict(temperature=1.3, top_p=0.9)),
    ],
)
def test_feature_drafter_keeps_the_target_distribution(vocab4_target, children, sampling):
    drafter = FeatureProjection.random(16, 4, seed=5, layers=(0,), scale=0.5)
    pvalue, tau = stat_pvalue(vocab4_target, drafter, Static(STAT_TREE, children), **sampling)
    assert pvalue > 1e-3, f"p={pvalue:.3g}"
    assert tau > 1.1  # drafts were accepted, so the law was exercised


@pytest.mark.slow
def test_early_exit_keeps_the_target_distribution(vocab4_target):
    pvalue, tau = stat_pvalue(
        vocab4_target, EarlyExit(1), Static(STAT_TREE, "sample"), temperature=1.0, top_p=0.95
    )
    assert pvalue > 1e-3, f"p={pvalue:.3g}"
    assert tau > 1.1


def test_self_drafter_reuse_is_refused_under_a_renumbering_policy(llama, plain_eos):
    from trees import Dynamic

    eos, plain = plain_eos
    policy = Dynamic(depth=4, top_k=3, total_tokens=6)
    # it drafts a working tree of 10 nodes but verifies only the 6 it keeps
    assert (policy.draft_nodes, policy.max_nodes) == (10, 6)
    with pytest.raises(ValueError, match="reuse=False"):
        specdec.generate(llama, PROMPTS, max_new_tokens=16, drafter=EarlyExit(1), policy=policy)
    out = specdec.generate(
        llama,
        PROMPTS,
        max_new_tokens=16,
        eos_token_id=eos,
        drafter=EarlyExit(1, reuse=False),
        policy=policy,
    )
    np.testing.assert_array_equal(out.tokens, plain.tokens)
