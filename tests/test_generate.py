"""specdec.generate without a drafter: ragged batches, EOS, no recompiles, and input validation."""

import math

import jax
import jax.monitoring
import numpy as np
import pytest

import specdec
from specdec.engine.generate import compile_count

PROMPTS = [[5, 17, 3, 99, 42, 8, 1], [64, 2, 2], [7] * 11]


def test_ragged_batch_equals_each_sequence_alone(llama):
    batched = specdec.generate(llama, PROMPTS, max_new_tokens=12)
    assert batched.tokens.shape == (3, 12) and batched.lengths.tolist() == [12, 12, 12]
    for b, prompt in enumerate(PROMPTS):
        alone = specdec.generate(llama, [prompt], max_new_tokens=12)
        np.testing.assert_array_equal(batched.tokens[b], alone.tokens[0])


def test_greedy_equals_argmax_of_full_forward(llama):
    out = specdec.generate(llama, [PROMPTS[0]], max_new_tokens=6)
    seq = list(PROMPTS[0])
    for _ in range(6):
        seq.append(int(np.argmax(np.asarray(llama.logits(np.array([seq])))[0, -1])))
    assert out.tokens[0].tolist() == seq[len(PROMPTS[0]) :]


def test_eos_stops_each_sequence_and_pads(llama):
    free = specdec.generate(llama, PROMPTS, max_new_tokens=12)
    eos = int(free.tokens[1, 4])  # force sequence 1 to stop at its 5th token
    out = specdec.generate(llama, PROMPTS, max_new_tokens=12, eos_token_id=eos, pad_token_id=127)
    for b in range(3):
        row = free.tokens[b].tolist()
        n = row.index(eos) + 1 if eos in row else 12
        assert out.lengths[b] == n
        assert out.tokens[b, :n].tolist() == row[:n]
        assert (out.tokens[b, n:] == 127).all()
    assert out.lengths[1] <= 5


def test_sampling_is_seeded_and_varies_with_seed(llama):
    a = specdec.generate(llama, PROMPTS, max_new_tokens=8, temperature=1.0, seed=1)
    b = specdec.generate(llama, PROMPTS, max_new_tokens=8, temperature=1.0, seed=1)
    c = specdec.generate(llama, PROMPTS, max_new_tokens=8, temperature=1.0, seed=2)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert (a.tokens != c.tokens).any()


def test_stats_are_consistent(llama):
    out = specdec.generate(llama, PROMPTS, max_new_tokens=9)
    s = out.stats
    assert s.new_tokens == 27 and s.tau == 1.0 and s.target_forwards == 8
    assert s.tokens_per_second == pytest.approx(27 / s.wall_seconds)


class _CompileCounter:
    """Counts XLA backend compilations (any jit in the process) while active."""

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)


def test_no_recompile_across_prompts_seeds_and_sampling_values(llama):
    # Warm: one compile per sampling mode (greedy, sampling, sampling through a filter).
    for sampling in (dict(), dict(temperature=1.0), dict(temperature=1.0, top_k=2)):
        specdec.generate(llama, [[1, 2, 3], [4, 5]], max_new_tokens=10, **sampling)
    before = compile_count()
    with _CompileCounter() as counter:
        specdec.generate(llama, [[9, 9, 9, 9, 9], [1]], max_new_tokens=10, seed=5)
        specdec.generate(
            llama, [[3, 1, 4, 1, 5, 9, 2], [6, 5, 3]], max_new_tokens=7, temperature=0.8
        )
        specdec.generate(
            llama,
            [[2, 7], [1, 8, 2, 8]],
            max_new_tokens=16,
            temperature=1.2,
            top_k=5,
            top_p=0.9,
            seed=123,
            eos_token_id=3,
        )
    assert compile_count() == before
    assert counter.count == 0
    # ...and the counter does see a compile when a static shape changes (a new batch size).
    with _CompileCounter() as counter:
        specdec.generate(llama, [[1, 2, 3]] * 5, max_new_tokens=10)
    assert counter.count >= 1 and compile_count() == before + 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(input_ids=[]), "empty"),
        (dict(input_ids=[[1, 2], []]), "prompt 1 is empty"),
        (dict(input_ids=[[1, 128]]), "token id 128, outside the vocabulary"),
        (dict(input_ids=[[1, -1]]), "token id -1"),
        (dict(input_ids=[[1, 2.5]]), "non-integer"),
        (dict(input_ids="hello"), "list of token-id lists"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=math.nan), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.01), "top_p"),
        (dict(top_k=-3), "top_k"),
        (dict(seed=-1), "seed"),
        (dict(eos_token_id=500), "eos_token_id 500"),
        (dict(max_cache_len=10), "needs 13 cache slots"),
        (dict(policy=object()), "without a drafter"),
    ],
)
def test_bad_input_is_a_clear_value_error(llama, kwargs, match):
    args = dict(input_ids=[[1, 2]], max_new_tokens=10) | kwargs
    with pytest.raises(ValueError, match=match):
        specdec.generate(llama, **args)


def _host_waits(model, prompts, **kwargs) -> tuple[int, int]:
    """(conditionals, while loops without a known trip count) in the compiled decode loop of
    this request: on a GPU each makes the host read a predicate back every time it runs."""
    from specdec.engine.generate import _JITTED, prepare, trace_settings

    p = prepare(model, prompts, max_new_tokens=4, **kwargs)
    lowered = _JITTED.lower(*p.args, policy=p.policy, shape=p.shape, settings=trace_settings())
    text = lowered.compile().as_text()
    lines = text.splitlines()
    conditionals = sum(" conditional(" in line for line in lines)
    unbounded = sum(" while(" in line and "known_trip_count" not in line for line in lines)
    return conditionals, unbounded


def test_a_changed_kernel_setting_compiles_a_new_loop(llama, monkeypatch):
    """The SPECDEC_* kernel choices are read while a loop is traced, so they key the compiled
    loops: changing one within a process compiles (and traces) anew, changing it back reuses."""
    from specdec import projection

    prompts = [[1, 2, 3], [4, 5]]
    monkeypatch.setenv(projection.SKINNY_ENV, "auto")
    first = specdec.generate(llama, prompts, max_new_tokens=6).tokens
    before = compile_count()
    monkeypatch.setenv(projection.SKINNY_ENV, "xla")
    np.testing.assert_array_equal(specdec.generate(llama, prompts, max_new_tokens=6).tokens, first)
    assert compile_count() == before + 1
    monkeypatch.setenv(projection.SKINNY_ENV, "auto")
    specdec.generate(llama, prompts, max_new_tokens=6)
    assert compile_count() == before + 1


@pytest.mark.parametrize(
    "sampling", [dict(), dict(temperature=0.8), dict(temperature=0.8, top_k=3, top_p=0.9)]
)
def test_compiled_loop_has_no_branches(llama, tiny_draft, sampling):
    """Each sampling mode compiles without a `lax.cond`, and the only loop with a data-dependent
    trip count is the outer one (is every sequence done?): plain decoding, a drafter sampling
    every level and, greedy, EAGLE-3 with EAGLE-2's dynamic tree and SpecExec's best-first tree."""
    from drafters import DraftModel, Eagle
    from trees import Chain, Dynamic, SpecExec

    assert _host_waits(llama, [[1, 2, 3]], **sampling) == (0, 1)
    spec = dict(drafter=DraftModel(tiny_draft), policy=Chain(3))
    assert _host_waits(llama, [[1, 2, 3]], **spec, **sampling) == (0, 1)
    if sampling:
        return
    eagle = Eagle.random(llama, version=3, seed=0, draft_vocab=32)
    trees = [
        (eagle, Dynamic(depth=3, top_k=4, total_tokens=10)),
        (DraftModel(tiny_draft), SpecExec(16, max_beams=4, max_branch_width=4)),
    ]
    for drafter, policy in trees:
        assert _host_waits(llama, [[1, 2, 3]], drafter=drafter, policy=policy) == (0, 1)


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.9, top_k=5, seed=3)])
def test_steps_per_sync_changes_nothing_but_the_checks(llama, tiny_draft, sampling):
    """Checking for completion every k steps gives the same tokens, lengths and counts (ragged
    batch, EOS, max_new not a multiple of k; plain and speculative): the steps run after every
    sequence is done commit nothing and are not counted."""
    from drafters import DraftModel
    from trees import Static

    prompts = [[1, 2, 3, 4, 5], [7], [9, 8, 7]]
    kinds = [dict(), dict(drafter=DraftModel(tiny_draft), policy=Static([[0], [0, 0], [1]]))]
    for spec in kinds:
        request = dict(max_new_tokens=11, eos_token_id=5, **spec, **sampling)
        runs = [specdec.generate(llama, prompts, steps_per_sync=k, **request) for k in (1, 3, 4)]
        for out in runs[1:]:
            np.testing.assert_array_equal(out.tokens, runs[0].tokens)
            np.testing.assert_array_equal(out.lengths, runs[0].lengths)
            assert out.stats.target_forwards == runs[0].stats.target_forwards
            assert out.stats.tau == runs[0].stats.tau


def test_steps_per_sync_must_be_positive(llama):
    with pytest.raises(ValueError, match="steps_per_sync must be an integer >= 1"):
        specdec.generate(llama, [[1, 2]], max_new_tokens=3, steps_per_sync=0)
