"""Issue 8, engine side: honest statistics, cache bounds at every step, validation in float32."""

import numpy as np
import pytest
from stepping import run_steps

import specdec
from drafters import DraftModel, NGram
from specdec.config import tiny_config
from specdec.engine import generate as generate_module
from specdec.sampling import SamplingParams, probabilities
from trees import Chain, Static

PROMPTS = [[5, 17, 3, 99, 42, 8, 1], [64, 2, 2], [7, 8, 9, 7, 8, 9, 7, 8]]


# ---- tau and the histograms count what was emitted ----------------------------------------------


@pytest.mark.parametrize("max_new,tau,forwards", [(18, 17 / 5, 5), (6, 5 / 2, 2), (17, 4.0, 4)])
def test_tau_counts_emitted_tokens_when_a_block_is_cut(llama, max_new, tau, forwards):
    """Self-drafting at T = 0 accepts every draft: blocks of 4, the last one cut by max_new."""
    out = specdec.generate(
        llama, [PROMPTS[0]], max_new_tokens=max_new, drafter=DraftModel(llama), policy=Chain(3)
    )
    assert out.stats.target_forwards == forwards
    assert out.stats.tau == pytest.approx(tau)
    hist = out.stats.accepted_length_histogram
    assert sum((n + 1) * c for n, c in enumerate(hist)) == max_new - 1
    assert out.stats.acceptance_by_depth == (1.0, 1.0, 1.0)


def test_tau_counts_emitted_tokens_when_eos_cuts_a_block(llama):
    free = specdec.generate(llama, [PROMPTS[0]], max_new_tokens=20)
    eos = int(free.tokens[0, 6])  # the 7th token: inside the second block of 4
    out = specdec.generate(
        llama,
        [PROMPTS[0]],
        max_new_tokens=20,
        eos_token_id=eos,
        drafter=DraftModel(llama),
        policy=Chain(3),
    )
    n = int(out.lengths[0])
    assert out.stats.tau == pytest.approx((n - 1) / out.stats.target_forwards)


def test_acceptance_by_depth_covers_only_the_trees_depths(llama):
    policy = Static([[0], [1], [0, 0], [0, 1], [0, 0, 0]])  # 6 nodes, depth 3
    out = specdec.generate(llama, PROMPTS, max_new_tokens=12, drafter=NGram(2), policy=policy)
    assert len(out.stats.acceptance_by_depth) == 3
    assert len(out.stats.accepted_length_histogram) == 4


# ---- the cache commits exactly what was emitted -------------------------------------------------

DEEP_TREE = (
    [[0] * d for d in range(1, 9)]
    + [[1], [2], [3], [1, 0], [2, 0], [0, 1], [0, 2], [0, 0, 1], [0, 0, 2], [0, 1, 0], [1, 0, 0]]
    + [[0, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1], [1, 1], [2, 1], [1, 0, 1], [3, 0]]
    + [[0, 0, 0, 2], [0, 0, 0, 0, 0, 0, 1], [0, 3], [0, 0, 3], [2, 0, 0]]
)


def test_cache_length_tracks_history_and_regions_stay_inside_capacity(llama):
    """Batch 4, prompts of 32, 64 new tokens, a 32-node depth-8 tree, rows stopping mid-block."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 128, 32).tolist() for _ in range(4)]
    free = specdec.generate(llama, prompts, max_new_tokens=64)
    eos = int(free.tokens[1, 10])
    policy = Static(DEEP_TREE)
    assert policy.max_nodes == 32 and policy.max_depth == 8
    states, shape = run_steps(
        llama, prompts, 64, drafter=DraftModel(llama), policy=policy, eos_token_id=eos
    )
    cut = False
    for state in states:
        lengths, hist_len = np.asarray(state.cache.lengths), np.asarray(state.hist_len)
        np.testing.assert_array_equal(lengths, hist_len - 1)
        assert (lengths + shape.tree_nodes <= shape.capacity).all()
        cut |= bool((np.asarray(state.num_generated) == 64).any())
    assert cut and bool(np.asarray(states[-1].done).all())
    spec = specdec.generate(
        llama,
        prompts,
        max_new_tokens=64,
        drafter=DraftModel(llama),
        policy=policy,
        eos_token_id=eos,
    )
    plain = specdec.generate(llama, prompts, max_new_tokens=64, eos_token_id=eos)
    np.testing.assert_array_equal(spec.tokens, plain.tokens)


# ---- validation in the precision used -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(top_p=1e-40), "top_p"),
        (dict(temperature=1e39), "temperature"),
        (dict(temperature=1e-50), "temperature"),
        (dict(top_k=2**40), "top_k"),
        (dict(top_k=2.0), "top_k"),
        (dict(pad_token_id=2**40), "pad_token_id"),
        (dict(pad_token_id=1.5), "pad_token_id"),
        (dict(max_new_tokens=2**40), "max_new_tokens"),
        (dict(max_new_tokens=10**6), "max_position_embeddings"),
        (dict(max_new_tokens=2**30, allow_beyond_max_position=True), "GiB"),
        (dict(eos_token_id=True), "eos_token_id"),
        (dict(eos_token_id=2.0), "eos_token_id"),
        (dict(eos_token_id="3"), "eos_token_id"),
        (dict(eos_token_id=[1, "x"]), "eos_token_id"),
        (dict(seed=np.int64(2**40)), "seed"),
        (dict(max_cache_len=8), "max_cache_len"),
    ],
)
def test_bad_arguments_are_clear_value_errors(llama, kwargs, match):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        specdec.generate(llama, [PROMPTS[0]], **kwargs)


def test_numpy_integers_are_accepted_like_python_ints(llama):
    a = specdec.generate(
        llama,
        [PROMPTS[0]],
        max_new_tokens=np.int64(4),
        top_k=np.int32(3),
        temperature=1.0,
        seed=np.int64(1),
        pad_token_id=np.int64(0),
        eos_token_id=np.int64(5),
    )
    b = specdec.generate(
        llama, [PROMPTS[0]], max_new_tokens=4, top_k=3, temperature=1.0, seed=1, eos_token_id=5
    )
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_generation_beyond_max_position_runs_when_asked(llama):
    prompt = [[1] * 250]
    with pytest.raises(ValueError, match="allow_beyond_max_position"):
        specdec.generate(llama, prompt, max_new_tokens=10)
    out = specdec.generate(llama, prompt, max_new_tokens=10, allow_beyond_max_position=True)
    assert out.lengths[0] == 10


def test_top_token_is_always_in_the_nucleus():
    logits = np.array([[3.0, 2.0, 1.0, 0.0]], np.float32)
    params = SamplingParams.create(temperature=1.0, top_p=float(np.finfo(np.float32).tiny))
    probs = np.asarray(probabilities(logits, params))
    np.testing.assert_allclose(probs, [[1.0, 0.0, 0.0, 0.0]])
    # a tiny temperature must not overflow: the result is the argmax, not NaN
    cold = np.asarray(probabilities(logits, SamplingParams.create(temperature=1e-30)))
    np.testing.assert_allclose(cold, [[1.0, 0.0, 0.0, 0.0]])


def test_ngram_sizes_must_be_integers():
    for bad in (2.5, "3", True):
        with pytest.raises(ValueError, match="max_ngram"):
            NGram(bad)
    assert NGram(np.int64(3)).max_ngram == 3


@pytest.fixture(scope="module")
def vocab4():
    cfg = tiny_config(
        vocab_size=4, hidden_size=16, intermediate_size=32, num_heads=2, num_kv_heads=1, head_dim=8
    )
    return specdec.Model.random(cfg, seed=1, attention="xla")


def test_tree_wider_than_the_vocabulary(vocab4):
    wide = [[0], [1], [2], [3], [4]]  # five children of the root, four tokens
    for children in ("top", "sample_without_replacement"):
        with pytest.raises(ValueError, match="vocabulary"):
            specdec.generate(
                vocab4,
                [[1, 2]],
                max_new_tokens=4,
                drafter=DraftModel(vocab4),
                policy=Static(wide, children),
            )
    # i.i.d. children may repeat: served (ranked at T = 0, with the extra ranks absent)
    for temperature in (0.0, 1.0):
        out = specdec.generate(
            vocab4,
            [[1, 2]],
            max_new_tokens=4,
            drafter=DraftModel(vocab4),
            policy=Static(wide, "sample"),
            temperature=temperature,
        )
        assert out.lengths[0] == 4


def test_draft_model_sliding_window_is_checked(llama):
    cfg = tiny_config(vocab_size=128, sliding_window=16)
    draft = specdec.Model.random(cfg, seed=2, attention="xla")
    with pytest.raises(ValueError, match="sliding_window"):
        specdec.generate(llama, [PROMPTS[0]], max_new_tokens=12, drafter=DraftModel(draft))


# ---- the compiled-loop cache is bounded ----------------------------------------------------------


def test_compiled_loops_are_evicted_least_recently_used():
    # A model of its own, so no loop compiled by another test shares these keys.
    model = specdec.Model.random(tiny_config(vocab_size=64, num_layers=1), seed=9)
    old = specdec.compiled_cache_size()
    try:
        specdec.compiled_cache_size(2)
        before = generate_module.compile_count()
        for batch in (1, 2, 3):
            specdec.generate(model, PROMPTS_64[:batch], max_new_tokens=2)
        assert len(generate_module._LOOPS) <= 2
        specdec.generate(model, PROMPTS_64[:3], max_new_tokens=2)  # most recent: reused
        assert generate_module.compile_count() == before + 3
        specdec.generate(model, PROMPTS_64[:1], max_new_tokens=2)  # evicted: compiled again
        assert generate_module.compile_count() == before + 4
        with pytest.raises(ValueError, match="maxsize"):
            specdec.compiled_cache_size(0)
    finally:
        specdec.compiled_cache_size(old)


PROMPTS_64 = [[5, 17, 3], [60, 2, 2], [7, 8]]
