"""The scaling experiments' shared pieces that run without decoding: the log-linear fit with
bootstrap intervals (experiments.scaling.fit) and the fixed-budget policy families."""

import json

import numpy as np
import pytest

from experiments.scaling import budget, fit


def test_fit_recovers_an_exact_log_linear_law():
    x = np.array([1e3, 1e4, 1e5, 1e6])
    law = fit.fit_log_linear(x, 1.5 + 0.25 * np.log10(x))
    assert law.slope == pytest.approx(0.25)
    assert law.intercept == pytest.approx(1.5)
    assert law.r2 == pytest.approx(1.0)
    np.testing.assert_allclose(law.predict([1e7]), [1.5 + 0.25 * 7])


def test_fit_rejects_what_has_no_log_line():
    with pytest.raises(ValueError, match="positive"):
        fit.fit_log_linear([0.0, 1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="two distinct"):
        fit.fit_log_linear([10.0, 10.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="one shape"):
        fit.bootstrap_log_linear([1, 10], np.ones((2, 3)), np.ones((2, 4)))


def simulated_counts(slope: float, intercept: float, x, prompts: int, seed: int):
    """Per-prompt (emitted, forwards) whose pooled ratio follows intercept + slope log10(x),
    with prompt-to-prompt noise: tau_prompt = law * (1 + noise)."""
    rng = np.random.default_rng(seed)
    law = intercept + slope * np.log10(np.asarray(x, float))
    forwards = rng.integers(20, 40, size=(len(x), prompts)).astype(float)
    noise = 1 + 0.15 * rng.standard_normal((1, prompts))  # a prompt is easy or hard at every x
    emitted = forwards * law[:, None] * noise
    return emitted, forwards


def test_bootstrap_interval_covers_the_true_slope_about_as_often_as_it_says():
    x = [1e5, 2e5, 4e5, 8e5, 1.6e6]
    covered = 0
    trials = 40
    for seed in range(trials):
        emitted, forwards = simulated_counts(0.6, -1.0, x, prompts=24, seed=seed)
        law = fit.bootstrap_log_linear(x, emitted, forwards, replicates=400, seed=seed)
        low, high = law.slope_ci
        assert low <= law.slope <= high
        covered += low <= 0.6 <= high
    # a 95% interval; percentile bootstraps under-cover a little at 24 prompts
    assert covered >= 0.8 * trials


def test_pooled_ratio_and_its_interval():
    emitted = np.array([[10.0, 30.0], [5.0, 5.0]])
    forwards = np.array([[10.0, 10.0], [5.0, 5.0]])
    np.testing.assert_allclose(fit.ratio_points(emitted, forwards), [2.0, 1.0])
    ci = fit.ratio_ci(emitted, forwards, replicates=500)
    assert ci[0, 0] >= 1.0 and ci[0, 1] <= 3.0 and ci[0, 0] < 2.0 < ci[0, 1]
    np.testing.assert_allclose(ci[1], [1.0, 1.0])  # no spread, no interval


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_policy_family_builds_at_every_gpu_budget(temperature):
    acceptance = (0.6, 0.2, 0.1, 0.05)
    budgets = budget.build_parser().get_default("budgets")
    for b in budgets:
        built = {
            name: budget.policy_for(name, b, temperature, acceptance, max_depth=8)
            for name in budget.POLICIES
        }
        for name, policy in built.items():
            if policy is None:
                assert name in ("Chain", "Adaptive") and b - 1 > 8, (name, b)
                continue
            # equal target compute: no policy verifies more than the budget
            assert policy.max_nodes <= b, (name, b, policy.max_nodes)
            assert policy.max_depth <= max(8, 32 if name == "SpecExec" else 8), (name, b)


def test_parts_of_a_gpu_sweep_are_merged_and_smoke_is_kept_apart(tmp_path, monkeypatch):
    import json

    from experiments.scaling import common

    monkeypatch.setenv(common.RESULTS_ENV, str(tmp_path))
    for stem, rows in (("budget-t0", [1, 2]), ("budget-t1", [3]), ("budget_smoke", [9])):
        record = {"experiment": "budget", "meta": {"part": stem}, "rows": rows}
        (tmp_path / f"{stem}.json").write_text(json.dumps(record))
    merged = common.load_result("budget", smoke=False)
    assert merged["rows"] == [1, 2, 3]
    assert [p["meta"]["part"] for p in merged["parts"]] == ["budget-t0", "budget-t1"]
    assert common.load_result("budget", smoke=True)["rows"] == [9]
    with pytest.raises(FileNotFoundError, match="run the experiment"):
        common.load_result("depth", smoke=False)


def test_per_row_counts_add_up_to_generate_stats():
    """common.run_rows keeps per-prompt counts; pooled, they are generate's tau and histogram."""
    import specdec
    from drafters import DraftModel
    from experiments.scaling import common
    from trees import Chain

    pair = common.tiny_pair()
    ids = [[1, 4, 300, 301, 302, 2, 5], [1, 4, 77, 2, 5, 12, 13, 14, 15]]
    kw = dict(max_new_tokens=12, drafter=DraftModel(pair.draft), policy=Chain(3))
    rows = common.run_rows(pair.target, ids, **kw)
    out = specdec.generate(pair.target, ids, eos_token_id=pair.target.tokenizer.eos_token_ids, **kw)
    assert rows.tau == pytest.approx(out.stats.tau)
    assert tuple(rows.emit_hist.sum(axis=0)[:4]) == out.stats.accepted_length_histogram
    assert rows.emitted.tolist() == (out.lengths - 1).tolist()


def test_a_policy_run_becomes_the_budget_notebooks_gpu_result(tmp_path):
    """The H200 policy comparison (gpu_speculation's policies phase) as experiment 1's file: the
    same rows, and the metadata every figure caption needs."""
    from experiments.scaling import common
    from train.tokens import REPO_ROOT

    spec = REPO_ROOT / "experiments" / "results" / "policies_h200" / "spec.json"
    path = budget.from_policy_run(spec, tmp_path)
    data = json.loads(path.read_text())
    assert path.name == "budget.json" and not data["smoke"]
    rows = json.loads(spec.read_text())["policies"]["rows"]
    assert data["rows"] == [dict(r, drafter="DraftModel") for r in rows]
    meta = data["meta"]
    assert meta["models"]["target"]["params"] == 100_680_000
    assert meta["models"]["draft"]["train_tokens"] == 58_800_000
    caption = common.caption(meta, drafter=meta["drafter"], batch=meta["batch"])
    assert "NVIDIA H200" in caption and "batch 4" in caption
    # The EAGLE-3 head's run (its own target) becomes a part the notebook merges.
    spec = REPO_ROOT / "experiments" / "results" / "policies_h200_eagle3" / "spec.json"
    path = budget.from_policy_run(spec, tmp_path, key="policies_eagle3")
    data = json.loads(path.read_text())
    assert path.name == "budget-eagle3.json" and {r["drafter"] for r in data["rows"]} == {"EAGLE-3"}
    assert data["meta"]["drafter"] == "EAGLE-3" and data["meta"]["batch"] == 4
    assert "EAGLE-3" in data["meta"]["models"]["eagle3"]["summary"]
    with pytest.raises(ValueError, match="key must be one of"):
        budget.from_policy_run(spec, tmp_path, key="eagle")


def test_time_split_records_device_times_when_cupti_is_there():
    """With a (fake) CUPTI timer each part and the fused step get a device time, a kernel count
    and the kernels grouped by name (most time first); without one (a CPU) only host times are
    recorded."""
    import argparse

    import jax

    from drafters import QuantSpec
    from experiments.scaling import common, time_split
    from trees import Chain

    class FakeCupti:
        method = "cupti"

        def __call__(self, fn, arg_sets):
            jax.block_until_ready(fn(*arg_sets[0]))
            breakdown = [("gemm", 0.01), ("fusion", 0.02), ("gemm", 0.03)]
            return {"ms": 0.25, "kernels": 7, "breakdown": breakdown}

    pair = common.tiny_pair()
    ids = common.prompts(pair.target.tokenizer, 2)
    args = argparse.Namespace(max_new=8, warm_steps=1, repeats=1)
    options = common.generate_options("QuantSpec")
    with_device = time_split.split_one(
        pair.target, QuantSpec(), Chain(2), ids, args, FakeCupti(), **options
    )
    names = {"fused_step", *time_split.PARTS}
    assert with_device["device_ms"] == dict.fromkeys(names, 0.25)
    assert with_device["kernels"] == dict.fromkeys(names, 7)
    grouped = [
        {"name": "gemm", "launches": 2, "us": 40.0},
        {"name": "fusion", "launches": 1, "us": 20.0},
    ]
    assert with_device["kernels_by_name"] == dict.fromkeys(names, grouped)
    host_only = time_split.split_one(pair.target, QuantSpec(), Chain(2), ids, args, **options)
    assert "device_ms" not in host_only and set(host_only["seconds"]) == set(time_split.PARTS)


def test_a_saved_heads_training_record_reaches_the_caption(tmp_path):
    """A head saved with its training record (steps) brings it back when loaded, and the figure
    caption shows the steps of a head whose record has no token count (a cut training shows)."""
    from experiments.scaling import common

    assert common.load_training_record(tmp_path) == {}
    common.save_training_record(tmp_path, {"steps": np.int64(21), "wall_seconds": 10.0})
    record = common.load_training_record(tmp_path)
    assert record == {"steps": 21, "wall_seconds": 10.0}
    meta = {
        "models": {"target": {"params": 1e8, "train_tokens": 4e7}},
        "drafters": {"EAGLE-1": {"head_params": 7.5e6, "version": 1, **record}},
        "data": "ShareGPT",
        "hardware": {"devices": 1, "device": "NVIDIA H200", "platform": "gpu"},
    }
    caption = common.caption(meta, batch=16)
    assert "EAGLE-1 head 7.5M params, 21 training steps" in caption
    assert "target 100M params, trained on 40M tokens" in caption
