"""Training: loss goes down, kill-and-resume is exact, export round-trips, data parallelism and
distillation are right. Micro models on tiny streams keep the whole file within a minute or two."""

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train.configs import TrainConfig, _llama, get_config
from train.steps import (
    Teacher,
    distill_kl,
    init_state,
    learning_rate,
    make_train_step,
    token_nll,
)
from train.tokenizer import TokenizerConfig
from train.tokens import Batches, eval_batches
from train.trainer import TrainData, Trainer, load_data

REPO = Path(__file__).resolve().parents[2]
VOCAB = 4096  # the conftest tokenizer's size, so exported micro models carry a usable tokenizer


def micro_config(**overrides) -> TrainConfig:
    base = TrainConfig(
        name="micro",
        model=_llama(VOCAB, 32, 2, 4, 2, 64),
        tokenizer=TokenizerConfig(vocab_size=VOCAB),
        batch_size=8,
        seq_len=32,
        steps=12,
        lr=1e-2,
        warmup_steps=2,
        compute_dtype="float32",
        eval_tokens=512,
        log_every=1,
    )
    return base.replace(**overrides)


def markov_stream(n: int, seed: int = 0) -> np.ndarray:
    """A learnable stream: each token picks one of two successors of the previous token."""
    rng = np.random.default_rng(seed)
    successors = rng.integers(6, 300, size=(VOCAB, 2))
    out = np.empty(n, np.uint16)
    out[0] = 6
    choices = rng.integers(0, 2, size=n)
    for i in range(1, n):
        out[i] = successors[out[i - 1], choices[i]]
    return out


@pytest.fixture(scope="module")
def micro_data() -> TrainData:
    stream = markov_stream(40_000)
    return TrainData(train=stream[:36_000], heldout=stream[36_000:])


def params_of(trainer: Trainer):
    return jax.device_get(trainer.state.params)


# ---- data and schedule -----------------------------------------------------------------------


def test_batches_are_rows_of_the_stream_and_each_epoch_visits_every_row_once():
    stream = np.arange(1000, dtype=np.uint16)
    batches = Batches(stream, batch_size=4, seq_len=10, seed=3)
    assert batches.rows == 99 and batches.batches_per_epoch == 24
    firsts = []
    for step in range(24):
        batch = batches(step)
        assert batch.shape == (4, 11) and batch.dtype == np.int32
        assert (np.diff(batch, axis=1) == 1).all() and (batch[:, 0] % 10 == 0).all()
        firsts += list(batch[:, 0] // 10)
    assert len(set(firsts)) == 96  # no row twice within an epoch
    np.testing.assert_array_equal(batches(5), Batches(stream, 4, 10, seed=3)(5))  # pure in step
    assert not np.array_equal(batches(24), batches(0))  # a new epoch, a new order


def test_eval_batches_score_each_target_once_with_padding():
    stream = np.arange(100, dtype=np.uint16)
    batches = list(eval_batches(stream, batch_size=4, seq_len=10, max_tokens=1000))
    weights = np.concatenate([w for _, w in batches])
    assert weights.sum() == 9 and len(batches) == 3  # (100 - 1) // 10 rows, last batch padded
    rows = np.concatenate([t for t, _ in batches])[weights > 0]
    np.testing.assert_array_equal(rows[:, 1:].reshape(-1), np.arange(1, 91))


def test_learning_rate_schedule():
    cfg = micro_config(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert learning_rate(0, 100, cfg) == pytest.approx(0.1)
    assert learning_rate(9, 100, cfg) == pytest.approx(1.0)
    assert learning_rate(10, 100, cfg) == pytest.approx(1.0)
    assert learning_rate(55, 100, cfg) == pytest.approx(0.55)  # halfway down the cosine
    assert learning_rate(100, 100, cfg) == pytest.approx(0.1)
    assert learning_rate(60, 60, cfg) == pytest.approx(0.1)  # a shorter schedule ends sooner
    assert learning_rate(50, 60, cfg) < learning_rate(50, 100, cfg)


def test_token_streams_are_cached_by_tokenizer_and_split(tokenizer_dir, sharegpt_subset, tmp_path):
    cfg = get_config("tiny", train_records=50, heldout_records=5)
    data = load_data(cfg, tokenizer_dir, source=sharegpt_subset, cache_dir=tmp_path)
    assert data.train.dtype == np.uint16 and data.train[0] == 1  # starts with <|bos|>
    assert len(list(tmp_path.glob("*.npy"))) == 2
    again = load_data(cfg, tokenizer_dir, source=sharegpt_subset, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.train, data.train)
    assert len(list(tmp_path.glob("*.npy"))) == 2  # read back, not tokenized again
    assert len(data.heldout) < len(data.train)


# ---- training --------------------------------------------------------------------------------


def test_a_few_steps_reduce_loss_on_tiny(tokenizer_dir, sharegpt_subset, tmp_path):
    """The real `tiny` model on real ShareGPT tokens (a shorter sequence to keep CI fast)."""
    cfg = get_config(
        "tiny",
        steps=16,
        warmup_steps=4,
        seq_len=128,
        log_every=1,
        eval_tokens=2048,
        train_records=300,
        heldout_records=10,
        save_every=0,
        compute_dtype="float32",
    )
    data = load_data(cfg, tokenizer_dir, source=sharegpt_subset, cache_dir=tmp_path)
    result = Trainer(cfg, data, progress=False).fit()
    losses = [loss for _, loss in result.history]
    assert losses[0] > math.log(VOCAB) - 1.0  # starts near uniform
    assert losses[-1] < losses[0] - 1.0
    assert result.heldout_loss < losses[0] - 0.5 and result.steps == 16


def test_resume_after_a_kill_reaches_the_same_parameters(micro_data, tmp_path):
    cfg = micro_config(steps=10, save_every=3)
    straight = Trainer(cfg, micro_data, progress=False)
    straight.fit()

    killed = Trainer(cfg, micro_data, workdir=tmp_path, progress=False)
    killed.fit(stop_after=7)  # saved at steps 3 and 6, then "killed" after step 7
    with pytest.raises(FileExistsError, match="resume"):
        Trainer(cfg, micro_data, workdir=tmp_path, progress=False)
    resumed = Trainer(cfg, micro_data, workdir=tmp_path, resume=True, progress=False)
    assert int(resumed.state.step) == 6
    result = resumed.fit()
    assert result.steps == 10
    jax.tree.map(np.testing.assert_array_equal, params_of(resumed), params_of(straight))
    with pytest.raises(ValueError, match="config"):  # another config cannot resume this run
        Trainer(
            micro_config(steps=10, save_every=3, lr=2e-2),
            micro_data,
            workdir=tmp_path,
            resume=True,
            progress=False,
        )


def test_time_budget_fixes_a_schedule_that_fits(micro_data):
    cfg = micro_config(steps=100_000, warmup_steps=5, log_every=10)
    trainer = Trainer(cfg, micro_data, progress=False)
    result = trainer.fit(time_budget_s=15.0)  # compile + 20 probe steps + eval take a few seconds
    assert result.wall_seconds < 15.0 + 2.0
    assert 21 < result.total_steps < 100_000 and result.steps <= result.total_steps
    assert result.steps >= 0.7 * result.total_steps  # the planned schedule (nearly) fit
    assert math.isfinite(result.heldout_loss)


def test_export_loads_in_specdec_with_the_training_logits(micro_data, tokenizer_dir, tmp_path):
    import specdec
    from train.export import export

    trainer = Trainer(micro_config(steps=5), micro_data, progress=False)
    trainer.fit()
    out = export(trainer.module(), tmp_path / "model", tokenizer_dir, info={"steps": 5})
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "training.json",
    ]
    model = specdec.load(out, dtype="float32", attention="xla")
    ids = micro_data.heldout[:40].astype(np.int32)[None]  # [1, 40]
    ours = np.asarray(model.logits(ids))
    training = np.asarray(trainer.model.logits(trainer.state.params, jnp.asarray(ids)))
    np.testing.assert_allclose(ours, training, atol=1e-5, rtol=1e-5)
    assert model.tokenizer is not None and model.tokenizer.eos_token_ids == (2,)

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["eos_token_id"] == 2
    transformers = pytest.importorskip("transformers")
    assert transformers.AutoConfig.from_pretrained(out).num_key_value_heads == 2
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tokenizer.eos_token == "<|end|>"

    small = export(trainer.module(), tmp_path / "bf16", tokenizer_dir, dtype="bfloat16")
    assert (small / "model.safetensors").stat().st_size < 0.6 * (
        out / "model.safetensors"
    ).stat().st_size
    bf16 = np.asarray(specdec.load(small, dtype="float32", attention="xla").logits(ids))
    assert np.abs(bf16 - ours).max() < 0.1


def test_distillation_loss_is_zero_when_student_is_the_teacher(micro_data):
    cfg = micro_config(distill_weight=0.5, distill_temperature=2.0)
    trainer = Trainer(cfg, micro_data, progress=False)
    model, params = trainer.model, jax.device_get(trainer.state.params)
    step = jax.jit(make_train_step(model, cfg, Teacher(model)))
    tokens = jnp.asarray(Batches(micro_data.train, 8, 32)(0))
    _, metrics = step(init_state(params, cfg), tokens, jnp.float32(0.0), params)
    assert abs(float(metrics["kl"])) < 1e-6
    assert float(metrics["loss"]) == pytest.approx(0.5 * float(metrics["ce"]), rel=1e-5)

    other = jax.device_get(Trainer(micro_config(seed=1), micro_data, progress=False).state.params)
    _, metrics = step(init_state(params, cfg), tokens, jnp.float32(0.0), other)
    assert float(metrics["kl"]) > 1e-4


def test_token_nll_is_minus_the_log_softmax_of_the_target_with_its_gradient():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 3, 7)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 7, size=(2, 3)), jnp.int32)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    expected = -jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(token_nll(logits, targets), expected, rtol=1e-6)
    grad = jax.grad(lambda z: token_nll(z, targets).sum())(logits)
    np.testing.assert_allclose(
        grad, jax.nn.softmax(logits, axis=-1) - jax.nn.one_hot(targets, 7), atol=1e-6
    )


def test_distill_kl_matches_its_definition():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 3, 7)), rng.normal(size=(2, 3, 7))
    t = 1.7
    p = np.exp(teacher / t) / np.exp(teacher / t).sum(-1, keepdims=True)
    q = np.exp(student / t) / np.exp(student / t).sum(-1, keepdims=True)
    expected = (p * np.log(p / q)).sum(-1) * t**2
    np.testing.assert_allclose(
        distill_kl(jnp.asarray(student), jnp.asarray(teacher), t), expected, rtol=1e-5
    )


def test_a_draft_trains_against_an_exported_teacher(micro_data, tokenizer_dir, tmp_path):
    import specdec
    from train.export import export

    target = Trainer(micro_config(steps=4), micro_data, progress=False)
    target.fit()
    teacher_dir = export(target.module(), tmp_path / "target", tokenizer_dir)
    teacher = specdec.load(teacher_dir, dtype="float32", attention="xla")
    cfg = micro_config(
        name="micro-draft",
        steps=4,
        distill_weight=0.5,
        model=dict(hidden_size=16, num_layers=1, head_dim=4),
    )
    result = Trainer(cfg, micro_data, teacher=teacher, progress=False).fit()
    assert result.flops_per_token > 6 * 16 * VOCAB  # the teacher's forward is counted
    assert math.isfinite(result.heldout_loss)


# ---- data parallelism --------------------------------------------------------------------------

_DATA_PARALLEL = textwrap.dedent(
    """
    import json, jax, numpy as np
    from tests.train.test_trainer import micro_config, markov_stream
    from train.trainer import Trainer, TrainData

    assert len(jax.devices()) == 8, jax.devices()
    stream = markov_stream(20_000)
    data = TrainData(train=stream[:18_000], heldout=stream[18_000:])
    results, params = {}, {}
    for n in (8, 1):
        trainer = Trainer(micro_config(steps=6), data, devices=jax.devices()[:n], progress=False)
        result = trainer.fit()
        results[n] = [loss for _, loss in result.history] + [result.heldout_loss]
        params[n] = jax.device_get(trainer.state.params)
        if n == 8:
            sharding = trainer.by_row
            assert len(jax.device_put(np.zeros((8, 3)), sharding).addressable_shards) == 8
    diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                                            params[8], params[1])))
    print(json.dumps({"losses": results, "param_diff": diff}))
    """
)


def test_data_parallel_on_8_devices_matches_one_device():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
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
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["losses"]["8"], out["losses"]["1"], rtol=1e-5)
    assert out["param_diff"] < 1e-4  # Adam turns reduction-order noise into ~lr-relative noise


def test_configs_are_sized_as_documented():
    from train.configs import CONFIGS, matmul_params

    sizes = {name: cfg.model.num_params() / 1e6 for name, cfg in CONFIGS.items()}
    assert 90 < sizes["small"] < 110 and 10 < sizes["small-draft"] < 20 and sizes["base"] > 300
    assert CONFIGS["small"].model.num_kv_heads < CONFIGS["small"].model.num_heads  # GQA
    assert CONFIGS["small-draft"].model.vocab_size == CONFIGS["small"].model.vocab_size
    assert CONFIGS["tiny-draft"].tokenizer == CONFIGS["tiny"].tokenizer
    assert matmul_params(CONFIGS["small"].model) < CONFIGS["small"].model.num_params()
    assert dataclasses.replace(CONFIGS["tiny"]).fingerprint() == CONFIGS["tiny"].fingerprint()
    assert CONFIGS["tiny"].replace(lr=1.0).fingerprint() != CONFIGS["tiny"].fingerprint()


def test_reference_pair_is_built_once_and_then_reused(sharegpt_subset, tmp_path):
    from train.reference import build_pair

    tokenizer = TokenizerConfig(vocab_size=512, max_records=200)
    data = dict(train_records=100, heldout_records=5, seq_len=32, steps=3, warmup_steps=1)
    target = micro_config(**data, tokenizer=tokenizer, model=dict(vocab_size=512))
    draft = micro_config(
        **data,
        name="micro-draft",
        tokenizer=tokenizer,
        distill_weight=0.5,
        model=dict(vocab_size=512, hidden_size=16, num_layers=1, head_dim=4),
    )
    kw = dict(root=tmp_path / "ref", source=sharegpt_subset, cache_dir=tmp_path / "cache")
    target_dir, draft_dir = build_pair(target, draft, **kw)
    info = json.loads((draft_dir / "training.json").read_text())
    assert info["teacher"] == str(target_dir) and info["result"]["steps"] == 3
    stamp = (target_dir / "model.safetensors").stat().st_mtime_ns
    assert build_pair(target, draft, **kw) == (target_dir, draft_dir)  # cached: no training
    assert (target_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list((tmp_path / "ref").glob("*/.work-*"))  # checkpoints cleaned up
    assert (target_dir / "tokenizer.json").read_bytes() == (
        draft_dir / "tokenizer.json"
    ).read_bytes()
    other = build_pair(target.replace(lr=2e-2), draft, **kw)[0]
    assert other.parent != target_dir.parent  # another config, another cache entry


def test_remat_when_the_step_would_not_fit_gives_the_same_training(micro_data, monkeypatch):
    import train.trainer as trainer_module

    plain = Trainer(micro_config(steps=3), micro_data, progress=False)
    plain.fit()
    monkeypatch.setattr(trainer_module, "_memory_limit", lambda device: 1024)  # "1 KiB device"
    squeezed = Trainer(micro_config(steps=3), micro_data, progress=False)
    squeezed.fit()
    assert squeezed.model.module(squeezed.state.params).remat
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
        params_of(squeezed),
        params_of(plain),
    )


def test_chunked_cross_entropy_gives_the_same_loss_and_gradients(micro_data):
    """loss_chunk computes the CE a chunk of tokens at a time (logits recomputed backward): the
    loss and the updated parameters equal the whole-logits step's in float32."""
    cfg = micro_config()
    trainer = Trainer(cfg, micro_data, progress=False)
    model, params = trainer.model, jax.device_get(trainer.state.params)
    tokens = jnp.asarray(Batches(micro_data.train, 8, 32)(0))
    results = []
    for chunk in (0, 64, 256):
        chunked = cfg.replace(loss_chunk=chunk)
        state, metrics = jax.jit(make_train_step(model, chunked))(
            init_state(params, chunked), tokens, jnp.float32(1e-3)
        )
        results.append((float(metrics["loss"]), float(metrics["grad_norm"]), state.params))
    for loss, norm, new in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-6)
        assert norm == pytest.approx(results[0][1], rel=1e-5)
        for a, b in zip(jax.tree.leaves(results[0][2]), jax.tree.leaves(new), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    "overrides, problem",
    [
        (dict(loss_chunk=-1), "loss_chunk"),
        (dict(loss_chunk=100), "divisor"),  # 8 x 32 tokens per step
        (dict(loss_chunk=64, distill_weight=0.5), "plain CE"),
    ],
)
def test_loss_chunk_must_divide_the_batch_and_apply_to_plain_ce(overrides, problem):
    with pytest.raises(ValueError, match=problem):
        micro_config(**overrides)


def test_loss_chunk_left_at_zero_keeps_the_fingerprint():
    cfg = micro_config()
    assert "loss_chunk" not in cfg.to_dict()
    assert cfg.replace(loss_chunk=64).fingerprint() != cfg.fingerprint()
