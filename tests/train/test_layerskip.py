"""LayerSkip training (train.layerskip): schedules by hand, the loss against plain CE, layer dropout
on in training and off at evaluation, every exit improving on `tiny`, exact kill-and-resume,
per-exit perplexities in the trainer's result, and continued training from an HF checkpoint."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from specdec.model import Transformer
from tests.train.test_trainer import markov_stream, micro_config, params_of
from train.configs import get_config
from train.layerskip import (
    LayerSkip,
    curriculum_mask,
    dropout_rates,
    dropout_time_scale,
    exit_scales,
)
from train.steps import init_state, make_eval_step, make_train_step
from train.tokens import Batches
from train.trainer import TrainData, Trainer, load_data


@pytest.fixture(scope="module")
def micro_data() -> TrainData:
    stream = markov_stream(40_000)
    return TrainData(train=stream[:36_000], heldout=stream[36_000:])


# ---- schedules -------------------------------------------------------------------------------


def test_dropout_rates_rise_exponentially_with_depth():
    # p_l = p_max (2^(l/3) - 1) for L = 4: 0, p (2^(1/3) - 1), p (2^(2/3) - 1), p.
    expected = 0.3 * np.array([0.0, 2 ** (1 / 3) - 1, 2 ** (2 / 3) - 1, 1.0])
    np.testing.assert_allclose(dropout_rates(0.3, 4), expected, rtol=1e-12)
    np.testing.assert_allclose(dropout_rates(0.2, 2), [0.0, 0.2])
    np.testing.assert_array_equal(dropout_rates(0.5, 1), [0.0])  # one layer: never dropped
    # The from-scratch curriculum in time: 2^(t/T) - 1, from 0 to 1.
    times = dropout_time_scale(jnp.array([0, 50, 100, 150]), jnp.int32(100))
    np.testing.assert_allclose(times, [0.0, math.sqrt(2) - 1, 1.0, 1.0], rtol=1e-6)


def test_exit_scales_are_cumulative_layer_sums_normalised_over_enabled_exits():
    on = jnp.ones(4, bool)
    # E(E+1)/2 for E = 1..4: 1, 3, 6, 10 (sum 20).
    np.testing.assert_allclose(exit_scales((1, 2, 3, 4), 4, 1.0, on), [1 / 20, 3 / 20, 6 / 20, 0.5])
    # e_scale on the early exits only: 0.5, 1.5, 3, 10 (sum 15).
    np.testing.assert_allclose(
        exit_scales((1, 2, 3, 4), 4, 0.5, on), np.array([0.5, 1.5, 3.0, 10.0]) / 15, rtol=1e-6
    )
    some = jnp.array([False, True, False, True])
    np.testing.assert_allclose(exit_scales((1, 2, 3, 4), 4, 1.0, some), [0, 3 / 13, 0, 10 / 13])
    np.testing.assert_allclose(exit_scales((2, 4), 4, 1.0, jnp.ones(2, bool)), [3 / 13, 10 / 13])
    np.testing.assert_allclose(exit_scales((1,), 1, 1.0, jnp.ones(1, bool)), [1.0])


def test_rotational_curriculum_shifts_every_step_and_keeps_the_final_exit():
    cfg = LayerSkip(curriculum="rotational", rotation=2)
    masks = [np.asarray(curriculum_mask(cfg, (1, 2, 3, 4), 4, jnp.int32(t), 10)) for t in range(3)]
    assert masks[0].tolist() == [True, False, True, True]  # layers 0 and 2, and the last
    assert masks[1].tolist() == [False, True, False, True]  # shifted by one
    assert masks[2].tolist() == masks[0].tolist()
    cfg = LayerSkip(curriculum="rotational", rotation=4)
    exits = tuple(range(1, 9))
    on = lambda t: [
        e for e, m in zip(exits, curriculum_mask(cfg, exits, 8, t, 10), strict=True) if m
    ]
    assert on(0) == [1, 5, 8] and on(1) == [2, 6, 8] and on(3) == [4, 8] and on(4) == [1, 5, 8]
    # A subset of exits keeps its layer numbers: exits 2 and 4 of 8 with R = 2.
    assert curriculum_mask(LayerSkip(rotation=2), (2, 4, 8), 8, 1, 10).tolist() == [1, 1, 1]
    assert curriculum_mask(LayerSkip(rotation=2), (2, 4, 8), 8, 0, 10).tolist() == [0, 0, 1]


def test_gradual_curriculum_enables_from_last_to_first_and_all_by_half():
    cfg = LayerSkip(curriculum="gradual")
    on = lambda t: np.asarray(curriculum_mask(cfg, (1, 2, 3, 4), 4, jnp.int32(t), 100)).tolist()
    # Exit E switches on at (4 - E) / 3 * 50: exit 3 at 16.7, exit 2 at 33.3, exit 1 at 50.
    assert on(0) == [False, False, False, True]
    assert on(16) == [False, False, False, True] and on(17) == [False, False, True, True]
    assert on(34) == [False, True, True, True] and on(49) == [False, True, True, True]
    assert on(50) == [True] * 4 and on(99) == [True] * 4
    none = LayerSkip(curriculum="none")
    assert np.asarray(curriculum_mask(none, (1, 3, 4), 4, 0, 100)).all()


def test_config_checks_exits_and_names_the_values():
    assert LayerSkip().exit_layers(4) == (1, 2, 3, 4)
    assert LayerSkip(exits=()).exit_layers(4) == (4,)  # the full model's exit is always trained
    assert LayerSkip(exits=(3, 1, 3)).exit_layers(4) == (1, 3, 4)
    with pytest.raises(ValueError, match=r"exits \[5\] are outside \[1, 4\]"):
        LayerSkip(exits=(5,)).check(4)
    with pytest.raises(ValueError, match="curriculum"):
        LayerSkip(curriculum="random")
    with pytest.raises(ValueError, match="p_max"):
        LayerSkip(p_max=1.5)
    with pytest.raises(ValueError, match="outside"):
        micro_config(layerskip=LayerSkip(exits=(3,)))  # micro has 2 layers
    with pytest.raises(ValueError, match="distill_weight"):
        micro_config(layerskip=LayerSkip(), distill_weight=0.5)
    plain = get_config("tiny")
    assert plain.replace(layerskip=None).fingerprint() == plain.fingerprint()
    assert plain.replace(layerskip=LayerSkip()).fingerprint() != plain.fingerprint()


# ---- the loss --------------------------------------------------------------------------------


def test_without_dropout_or_early_exits_the_loss_is_the_plain_cross_entropy(micro_data):
    plain_cfg = micro_config()
    cfg = micro_config(layerskip=LayerSkip(p_max=0.0, exits=()))
    trainer = Trainer(plain_cfg, micro_data, progress=False)
    model, params = trainer.model, params_of(trainer)
    tokens = jnp.asarray(Batches(micro_data.train, 8, 32)(0))
    lr = jnp.float32(1e-2)
    plain_state, plain = jax.jit(make_train_step(model, plain_cfg))(
        init_state(params, plain_cfg), tokens, lr
    )
    state, metrics = jax.jit(make_train_step(model, cfg))(init_state(params, cfg), tokens, lr)
    assert float(metrics["loss"]) == pytest.approx(float(plain["loss"]), rel=1e-6)
    assert float(metrics["ce"]) == pytest.approx(float(plain["ce"]), rel=1e-6)
    assert float(metrics["grad_norm"]) == pytest.approx(float(plain["grad_norm"]), rel=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state.params, plain_state.params
    )


def test_layer_dropout_is_on_in_training_and_off_at_evaluation(micro_data):
    # p_max = 1 on a 2-layer model: layer 1 is always dropped in training, so the full model's
    # training loss is exit 1's; evaluation runs every layer.
    cfg = micro_config(layerskip=LayerSkip(p_max=1.0, curriculum="none"))
    trainer = Trainer(cfg, micro_data, progress=False)
    model, params = trainer.model, params_of(trainer)
    tokens = jnp.asarray(Batches(micro_data.train, 8, 32)(0))
    _, metrics = jax.jit(make_train_step(model, cfg))(init_state(params, cfg), tokens, 0.0)
    exit_ce = np.asarray(metrics["exit_ce"])
    assert exit_ce[1] == pytest.approx(exit_ce[0], rel=1e-6)
    weights = jnp.full((8,), 1.0 / (8 * 32))
    nll, count = jax.jit(make_eval_step(model, (1, 2)))(params, tokens, jnp.ones(8))
    assert float(nll[0]) / float(count) == pytest.approx(exit_ce[0], rel=1e-5)  # exit 1: same
    assert abs(float(nll[1] - nll[0])) / float(count) > 1e-4  # exit 2 runs layer 1 at eval
    full, _ = jax.jit(make_eval_step(model))(params, tokens, weights)
    assert float(full) == pytest.approx(float(nll[1]) / float(count), rel=1e-5)


# ---- training --------------------------------------------------------------------------------


def test_early_exit_training_reduces_every_exit_loss_on_tiny(
    tokenizer_dir, sharegpt_subset, tmp_path
):
    """The real `tiny` model (4 layers) on real ShareGPT tokens, rotational curriculum."""
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
        layerskip=LayerSkip(p_max=0.1, rotation=2),
    )
    data = load_data(cfg, tokenizer_dir, source=sharegpt_subset, cache_dir=tmp_path)
    trainer = Trainer(cfg, data, progress=False)
    before = trainer.evaluate_exits()  # [4]: exits 1, 2, 3 and the full model
    result = trainer.fit()
    after = np.asarray(result.exit_heldout_loss)
    assert before.shape == after.shape == (4,)
    assert (after < before - 0.5).all(), (before, after)  # every exit, by ~0.9 nats here
    assert result.exit_heldout_loss[-1] == pytest.approx(result.heldout_loss)
    assert result.exit_heldout_ppl[-1] == pytest.approx(result.heldout_ppl)
    np.testing.assert_allclose(np.log(result.exit_heldout_ppl), after, rtol=1e-6)
    assert "held-out ppl by exit 1: " in result.summary() and "4 (full): " in result.summary()
    losses = [loss for _, loss in result.history]
    assert losses[-1] < losses[0] - 1.0


def test_resume_after_a_kill_with_layerskip_reaches_the_same_parameters(micro_data, tmp_path):
    recipe = LayerSkip(p_max=0.5, curriculum="gradual", dropout_warmup=True)
    cfg = micro_config(steps=10, save_every=3, layerskip=recipe)
    straight = Trainer(cfg, micro_data, progress=False)
    straight.fit()

    killed = Trainer(cfg, micro_data, workdir=tmp_path, progress=False)
    killed.fit(stop_after=7)  # saved at steps 3 and 6, then "killed" after step 7
    resumed = Trainer(cfg, micro_data, workdir=tmp_path, resume=True, progress=False)
    assert int(resumed.state.step) == 6
    result = resumed.fit()
    assert result.steps == 10 and len(result.exit_heldout_loss) == 2
    jax.tree.map(np.testing.assert_array_equal, params_of(resumed), params_of(straight))
    with pytest.raises(ValueError, match="config"):  # the plain recipe cannot resume this run
        Trainer(micro_config(steps=10, save_every=3), micro_data, workdir=tmp_path, resume=True)


def test_a_model_trained_without_the_recipe_reports_exit_perplexities_on_request(micro_data):
    plain = Trainer(micro_config(steps=3), micro_data, progress=False).fit()
    assert plain.exit_heldout_ppl == () and "by exit" not in plain.summary()
    baseline = Trainer(micro_config(steps=3), micro_data, eval_exits=True, progress=False).fit()
    assert len(baseline.exit_heldout_ppl) == 2
    assert baseline.heldout_loss == pytest.approx(plain.heldout_loss, rel=1e-5)
    assert baseline.exit_heldout_loss[-1] == pytest.approx(baseline.heldout_loss)


def test_init_from_continues_an_exported_checkpoint(micro_data, tokenizer_dir, tmp_path):
    from train.export import export

    first = Trainer(micro_config(steps=3), micro_data, progress=False)
    first.fit()
    out = export(first.module(), tmp_path / "model", tokenizer_dir)
    cfg = micro_config(steps=3, seed=7, layerskip=LayerSkip(p_max=0.2))
    continued = Trainer(cfg, micro_data, init_from=out, progress=False)
    jax.tree.map(np.testing.assert_array_equal, params_of(continued), params_of(first))
    assert continued.evaluate()[0] == pytest.approx(first.evaluate()[0], rel=1e-5)
    with pytest.raises(ValueError, match="hidden_size"):
        Trainer(micro_config(model=dict(hidden_size=64)), micro_data, init_from=out)


def test_target_cli_continues_a_checkpoint_with_layerskip(
    tokenizer_dir, sharegpt_subset, tmp_path, capsys
):
    from train import target
    from train.export import export

    module = Transformer(get_config("tiny").model, rngs=nnx.Rngs(0))  # a `tiny` checkpoint
    start = export(module, tmp_path / "start", tokenizer_dir)
    result_file = tmp_path / "result.json"
    result = target.main(
        [
            "--init-from", str(start), "--out", str(tmp_path / "out"), "--data",
            str(sharegpt_subset), "--cache-dir", str(tmp_path / "cache"), "--steps", "2",
            "--batch-size", "8", "--seq-len", "64", "--no-checkpoints", "--no-progress",
            "--json", str(result_file), "--layerskip", "--layerskip-p-max", "0.2",
            "--layerskip-curriculum", "gradual", "--layerskip-exits", "2",
        ]
    )  # fmt: skip
    assert result.steps == 2 and len(result.exit_heldout_ppl) == 4
    saved = json.loads(result_file.read_text())
    assert len(saved["exit_heldout_ppl"]) == 4
    info = json.loads((tmp_path / "out" / "training.json").read_text())
    assert info["init_from"] == str(start)
    assert info["config"]["layerskip"]["exits"] == [2]
    assert info["config"]["layerskip"]["curriculum"] == "gradual"
    for bad in (["--layerskip-p-max", "0.2"], ["--layerskip", "--layerskip-exits", "9"]):
        with pytest.raises(SystemExit):  # an option without --layerskip; an exit beyond 4 layers
            target.main(["--init-from", str(start), "--out", str(tmp_path / "bad"), *bad])
    assert "need --layerskip" in capsys.readouterr().err


def test_per_layer_remat_gives_the_same_early_exit_training(micro_data):
    recipe = LayerSkip(p_max=0.5, rotation=1)
    plain = Trainer(micro_config(steps=3, layerskip=recipe), micro_data, progress=False)
    plain.fit()
    remat = Trainer(micro_config(steps=3, layerskip=recipe, remat=True), micro_data, progress=False)
    remat.fit()
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params_of(remat), params_of(plain)
    )
