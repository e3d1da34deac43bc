"""EAGLE head training (train.eagle): the TTT mask and attention, the data helpers, loss going
down for EAGLE-1 and EAGLE-3 on the tiny reference target, exact kill-and-resume, and the exported
head loading with `Eagle.load` and decoding exactly as plain greedy."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import specdec
from drafters import Eagle
from specdec.attention import kernel_slots
from specdec.cache import KVCache, Region
from train import eagle as eagle_cli
from train.eagle import EagleConfig, EagleTrainer, build_data
from train.eagle_data import (
    _render,
    _turns,
    assistant_mask,
    chat_ids,
    draft_vocabulary,
    draft_vocabulary_size,
    predicted_counts,
    regenerate_documents,
    regeneration_batches,
)
from train.eagle_steps import fuse, run_target, ttt_attention, ttt_mask, ttt_unroll
from train.reference import reference_pair
from train.tokens import token_stream
from trees import Chain

REPO = Path(__file__).resolve().parents[2]
IDS = {"bos": 1, "end": 2, "system": 3, "user": 4, "assistant": 5}  # train.chat's order
PROMPTS = [[1, 4, 300, 301, 302, 2, 5], [1, 4, 77, 2, 5, 12, 13], [1, 4, 9, 9, 9, 9, 2, 5, 40]]


def micro(**overrides) -> EagleConfig:
    base = dict(
        batch_size=4,
        seq_len=48,
        steps=12,
        lr=3e-3,
        warmup_steps=2,
        ttt_steps=3,
        draft_vocab=512,
        eval_tokens=512,
        log_every=2,
        save_every=0,
    )
    return EagleConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def tiny():
    """(target dir, float32 target, train stream, held-out stream) of the tiny reference pair."""
    target_dir, _ = reference_pair("tiny")
    target = specdec.load(target_dir, dtype=jnp.float32, attention="xla")
    train = np.asarray(token_stream(target_dir, "train", max_records=800)[:60_000])
    heldout = np.asarray(token_stream(target_dir, "heldout", max_records=40)[:4_000])
    return target_dir, target, train, heldout


def test_ttt_mask_hand_written():
    # Step 2 of a 3-position row: step 0 causal, then steps 1 and 2 only the query's own index.
    expected = np.array(
        [
            [1, 0, 0, 1, 0, 0, 1, 0, 0],
            [1, 1, 0, 0, 1, 0, 0, 1, 0],
            [1, 1, 1, 0, 0, 1, 0, 0, 1],
        ],
        bool,
    )
    np.testing.assert_array_equal(ttt_mask(3, 2), expected)
    np.testing.assert_array_equal(ttt_mask(3, 0), np.tril(np.ones((3, 3), bool)))


@pytest.mark.parametrize("step", [0, 1, 3])
def test_ttt_attention_equals_dense_masked_attention(step):
    batch, length, heads, kv_heads, dim = 2, 5, 4, 2, 8
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (batch, length, heads, dim))
    ks = jax.random.normal(keys[1], (step + 1, batch, length, kv_heads, dim))
    vs = jax.random.normal(keys[2], (step + 1, batch, length, kv_heads, dim))
    got = ttt_attention(q, tuple(ks), tuple(vs))
    flat = lambda x: jnp.concatenate(list(x), axis=1)  # steps laid out one after another
    want = jax.nn.dot_product_attention(
        q, flat(ks), flat(vs), mask=ttt_mask(length, step)[None, None]
    )
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_ttt_unroll_equals_chain_drafting_with_the_head_cache(tiny):
    """Step k of training-time test at index t is what the drafter computes for the k-th node of
    a chain grown after absorbing positions 0..t (own features fed back, tokens ground truth)."""
    _, target, _, heldout = tiny
    eagle = Eagle.random(target, version=3, seed=1, draft_vocab=256, target_layers=(0, 1, 3))
    head, net, steps, f32 = eagle.head.module(), target.module(), 4, jnp.float32
    tokens = jnp.asarray(heldout[None, :25], jnp.int32)  # [1, L+1], L = 24
    fused = fuse(head, tuple(t[:, :-1] for t in run_target(net, tokens, (0, 1, 3)).taps), f32)
    unrolled = jax.jit(lambda f: ttt_unroll(head, net, tokens, f, steps, f32))(fused)
    run = jax.jit(eagle._run, static_argnames="prefix")  # eager dispatch is slow on CPU
    for t in (0, 19):
        cache = KVCache.create(
            1, 1, kernel_slots(32), net.config.num_kv_heads, net.config.head_dim, f32
        )
        x, cache = run(
            tokens[:, 1 : t + 2],
            fused[:, : t + 1],
            jnp.arange(t + 1)[None],
            cache,
            Region.causal(1, t + 1),
            prefix=False,
        )
        np.testing.assert_allclose(x[0], unrolled[0][0, : t + 1], atol=2e-5)
        cache = cache.with_lengths(jnp.array([t + 1]))
        for k in range(1, steps):
            x, cache = run(
                tokens[:, t + k + 1 : t + k + 2],
                x[:, -1:],
                jnp.array([[t + k]]),
                cache,
                Region.causal(1, 1),
            )
            cache = cache.advance(jnp.ones((1,), jnp.int32))
            np.testing.assert_allclose(x[0, 0], unrolled[k][0, t], atol=2e-5, err_msg=f"{t=} {k=}")


def test_assistant_mask_marks_positions_that_predict_assistant_tokens():
    # <bos> <user> a b <end> <assistant> c d <end> <bos> <assistant> e <end>
    stream = np.array([1, 4, 10, 11, 2, 5, 20, 21, 2, 1, 5, 30, 2])
    expected = [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0]
    np.testing.assert_array_equal(assistant_mask(stream, IDS), expected)
    np.testing.assert_array_equal(assistant_mask(stream, None), np.ones(13))


def test_draft_vocabulary_counts_predicted_assistant_tokens():
    # Predicted (masked) tokens: 7 x3, 9 x2, 8 x2, 6 x1; 40 appears only in user text.
    stream = np.array([1, 4, 40, 40, 40, 40, 2, 5, 7, 7, 9, 8, 2, 1, 5, 9, 7, 8, 6, 2])
    counts = predicted_counts(stream, assistant_mask(stream, IDS), 64)
    np.testing.assert_array_equal(draft_vocabulary(counts, 3), [2, 7, 8])  # 2: <end> x2
    np.testing.assert_array_equal(draft_vocabulary(counts, 4), [2, 7, 8, 9])
    # Unseen ids fill up in id order; all ones counts every token.
    np.testing.assert_array_equal(draft_vocabulary(counts, 8), [0, 1, 2, 3, 6, 7, 8, 9])
    every = predicted_counts(stream, np.ones_like(stream), 64)
    assert 40 in draft_vocabulary(every, 2)
    with pytest.raises(ValueError, match="size=65"):
        draft_vocabulary(counts, 65)


def test_a_regenerated_corpus_keeps_the_original_corpus_ids_in_its_draft_vocabulary():
    """build_data ranks the regenerated stream's predicted ids plus the given counts (load_data
    passes the original corpus's): an id only the original text predicts stays draftable."""
    regenerated = np.array([1, 4, 40, 2, 5, 7, 7, 7, 2])  # greedy text predicts 7 and <end>
    text = np.array([1, 4, 40, 2, 5, 9, 9, 2])  # the original answer predicts 9 and <end>
    original = predicted_counts(text, assistant_mask(text, IDS), 64)
    cfg = EagleConfig(version=3, draft_vocab_coverage=1.0)
    alone = build_data(regenerated, regenerated, IDS, cfg, 64)
    union = build_data(regenerated, regenerated, IDS, cfg, 64, vocabulary_counts=original)
    np.testing.assert_array_equal(alone.draft_ids, [2, 7])
    assert 9 in union.draft_ids and 7 in union.draft_ids


def test_draft_vocabulary_size_is_the_fewest_ids_reaching_the_coverage():
    # Predicted tokens (all positions count): 5 x5, 3 x3, 9 x1, 4 x1 = 10 tokens.
    stream = np.array([0, 5, 5, 5, 5, 5, 3, 3, 3, 9, 4])
    counts = predicted_counts(stream, np.ones_like(stream), 64)
    size = lambda coverage, cap=64: draft_vocabulary_size(counts, coverage, cap)
    assert [size(0.5), size(0.8), size(0.81), size(0.9), size(1.0)] == [1, 2, 3, 3, 4]
    assert size(1.0, cap=2) == 2  # the cap wins
    top = draft_vocabulary(counts, size(0.8))  # the same ranking: 5 and 3
    np.testing.assert_array_equal(top, [3, 5])
    with pytest.raises(ValueError, match="coverage=0"):
        size(0.0)


def test_regenerate_replaces_assistant_turns_by_greedy_responses(tiny):
    _, target, _, _ = tiny
    documents = [
        np.array([1, 4, 300, 301, 2, 5, 600, 601, 602, 2, 4, 70, 2, 5, 9, 2]),
        np.array([1, 3, 50, 2, 4, 77, 78, 2, 5, 11, 2]),
    ]
    new = regenerate_documents(target, documents, IDS, max_new_tokens=6, batch_size=8)
    for old, doc in zip(documents, new, strict=True):
        old_turns, turns = _turns(old, IDS), _turns(doc, IDS)
        assert [r for r, _ in old_turns] == [r for r, _ in turns]
        for j, (role, text) in enumerate(turns):
            if role != IDS["assistant"]:
                np.testing.assert_array_equal(text, old_turns[j][1])  # user turns kept
                continue
            prompt = [*_render(turns[:j], IDS), IDS["assistant"]]
            stops = sorted(IDS.values())  # a reply ends at any chat token
            reply = specdec.generate(target, [prompt], max_new_tokens=6, eos_token_id=stops)
            want = reply.sequences()[0]
            np.testing.assert_array_equal(text, want[:-1] if want[-1] in stops else want)
    # One prompt per generate (every batch over the token bound): the same documents.
    alone = regenerate_documents(
        target, documents, IDS, max_new_tokens=6, batch_size=8, batch_tokens=1
    )
    for a, b in zip(new, alone, strict=True):
        np.testing.assert_array_equal(a, b)


def test_regeneration_batches_one_size_per_length_bucket_within_the_bounds():
    lengths = [10, 12, 20, 30, 30, 31, 100, 500, 17]  # buckets 16 16 32 32 32 32 128 512 32
    batches = regeneration_batches(lengths, batch_size=3, batch_tokens=100, extra=10)
    assert batches == [([0, 1], 2), ([2, 3], 2), ([4, 5], 2), ([8], 2), ([6], 1), ([7], 1)]
    covered = sorted(i for indices, _ in batches for i in indices)
    assert covered == list(range(len(lengths)))  # every prompt once
    for indices, size in batches:
        assert len(indices) <= size <= 3 and size & (size - 1) == 0
    assert regeneration_batches([5] * 7, 64, 10**9) == [(list(range(7)), 64)]
    assert regeneration_batches([], 4, 100) == []
    with pytest.raises(ValueError, match="batch_tokens=0"):
        regeneration_batches([1], 4, 0)


@pytest.mark.parametrize("version", [1, 3])
def test_training_reduces_the_loss(tiny, version):
    _, target, train, heldout = tiny
    cfg = micro(version=version, steps=20)
    data = build_data(train, heldout, chat_ids(tiny[0]), cfg, target.config.vocab_size)
    assert data.masked and len(data.draft_ids) == (512 if version == 3 else 4096)
    result = EagleTrainer(cfg, target, data, progress=False).fit()
    assert result.heldout_loss < 0.85 * result.initial_heldout_loss, result.summary()
    assert result.history[-1][1] < result.history[0][1]
    assert len(result.heldout_acc) == (3 if version == 3 else 1)


def test_a_time_budget_fixes_the_schedule_and_is_kept(tiny, monkeypatch):
    _, target, train, heldout = tiny
    monkeypatch.setattr(eagle_cli, "PROBE_STEPS", 3)  # time 3 steps, then plan
    cfg = micro(version=1, steps=100_000, warmup_steps=2)
    data = build_data(train, heldout, chat_ids(tiny[0]), cfg, target.config.vocab_size)
    result = EagleTrainer(cfg, target, data, progress=False).fit(time_budget_s=8)
    assert 4 <= result.total_steps < cfg.steps and result.steps <= result.total_steps
    assert result.wall_seconds < 8 + 2  # the final evaluation may spill a little


def test_kill_and_resume_gives_identical_parameters(tiny, tmp_path):
    _, target, train, heldout = tiny
    cfg = micro(version=3, steps=8, save_every=3, ttt_steps=2)
    data = build_data(train, heldout, chat_ids(tiny[0]), cfg, target.config.vocab_size)
    straight = EagleTrainer(cfg, target, data, progress=False)
    straight.fit()
    killed = EagleTrainer(cfg, target, data, workdir=tmp_path, progress=False)
    assert killed.fit(stop_after=5) is None  # "killed" after step 5: only step 3 was saved
    with pytest.raises(FileExistsError):
        EagleTrainer(cfg, target, data, workdir=tmp_path, progress=False)
    resumed = EagleTrainer(cfg, target, data, workdir=tmp_path, resume=True, progress=False)
    assert int(resumed.state.step) == 3
    resumed.fit()
    for a, b in zip(
        jax.tree.leaves(straight.state.params), jax.tree.leaves(resumed.state.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cli_exports_a_head_that_decodes_exactly(tiny, tmp_path, capsys):
    target_dir, target, _, _ = tiny
    with pytest.raises(SystemExit):
        eagle_cli.main(["--help"])
    assert "--regenerate" in capsys.readouterr().out
    out = tmp_path / "head"
    common = ["--target", str(target_dir), "--out", str(out), "--no-progress"]
    small = ["--batch-size", "2", "--seq-len", "32", "--train-records", "30"]
    small += ["--heldout-records", "3", "--cache-dir", str(tmp_path / "cache")]
    result = eagle_cli.main(
        [
            *common,
            "--version",
            "3",
            "--steps",
            "4",
            "--draft-vocab",
            "256",
            "--ttt-steps",
            "2",
            *small,
        ]
    )
    assert result.steps == 4 and result.draft_vocab == 256
    info = json.loads((out / "training.json").read_text())
    assert info["config"]["ttt_steps"] == 2
    head = Eagle.load(out, target)
    assert head.version == 3 and len(head.draft_ids) == 256
    plain = specdec.generate(target, PROMPTS, max_new_tokens=12)
    for policy in (None, Chain(3)):
        fast = specdec.generate(target, PROMPTS, max_new_tokens=12, drafter=head, policy=policy)
        np.testing.assert_array_equal(fast.tokens, plain.tokens)
        np.testing.assert_array_equal(fast.lengths, plain.lengths)
    # A second run into the same place needs --resume.
    with pytest.raises(SystemExit, match="--resume"):
        eagle_cli.main([*common, "--version", "3", "--steps", "4", *small])


_DATA_PARALLEL = textwrap.dedent(
    """
    import json, jax, numpy as np, specdec
    from tests.train.test_eagle_train import micro
    from train.eagle import EagleTrainer, build_data
    from train.eagle_data import chat_ids
    from train.reference import reference_pair
    from train.tokens import token_stream

    assert len(jax.devices()) == 2, jax.devices()
    target_dir, _ = reference_pair("tiny")
    target = specdec.load(target_dir, dtype="float32", attention="xla")
    train = np.asarray(token_stream(target_dir, "train", max_records=800)[:20_000])
    heldout = np.asarray(token_stream(target_dir, "heldout", max_records=40)[:2_000])
    out = {}
    for version in (3,):  # sharding is by row for both; EAGLE-3's unrolled step is the bigger one
        cfg = micro(version=version, steps=6, ttt_steps=2)
        data = build_data(train, heldout, chat_ids(target_dir), cfg, target.config.vocab_size)
        runs = {}
        for n in (2, 1):
            trainer = EagleTrainer(cfg, target, data, devices=jax.devices()[:n], progress=False)
            trainer.fit(stop_after=4)  # 4 steps, no evaluation (compiles are the cost here)
            runs[n] = jax.device_get(trainer.state.params)
        diff = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), runs[2], runs[1])
        out[version] = {"diff": max(jax.tree.leaves(diff))}
    print(json.dumps(out))
    """
)


def test_data_parallel_on_2_devices_matches_one_device():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _DATA_PARALLEL],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for version, run in json.loads(proc.stdout.strip().splitlines()[-1]).items():
        assert run["diff"] < 1e-4, (version, run["diff"])  # reduction order only
