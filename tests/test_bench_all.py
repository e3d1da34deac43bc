"""The pure helpers of experiments/bench_all.py (its sections need a GPU and run as a script)."""

import pytest

from experiments.bench_all import kernels_per_step


def test_kernels_per_step_is_the_difference_of_two_loop_lengths():
    # 10 steps against 4: "attn" 2 launches a step (0.01 ms each), "mlp" 1 (0.03 ms); prefill's
    # "embed" appears once in both runs and so is not a per-step kernel.
    full = [("embed", 0.5)] + [("attn", 0.01), ("attn", 0.01), ("mlp", 0.03)] * 10
    half = [("embed", 0.5)] + [("attn", 0.01), ("attn", 0.01), ("mlp", 0.03)] * 4
    rows = kernels_per_step(full, half, steps=6)
    assert [r["name"] for r in rows] == ["mlp", "attn"]  # by time per step
    assert rows[0]["per_step"] == pytest.approx(1) and rows[0]["us_per_step"] == pytest.approx(30)
    assert rows[1]["per_step"] == pytest.approx(2) and rows[1]["us_per_step"] == pytest.approx(20)
    assert len(kernels_per_step(full, half, steps=6, top=1)) == 1


def test_timed_step_seconds_takes_the_median_pair(monkeypatch):
    """bench_decode.timed_step_seconds: per pair (time difference) / (forward difference), the
    median over `repeats` pairs, so one slow pair does not move the figure."""
    import types

    from experiments import bench_decode

    # Warm-up call, then pairs (full = 256 new tokens, short = 129): one pair per row of
    # (full seconds, short seconds); the second pair's full run is slow.
    walls = iter([9.0, 2.0, 1.0, 4.0, 1.0, 2.2, 1.0])

    def fake_generate(model, prompts, max_new_tokens, **kwargs):
        stats = types.SimpleNamespace(wall_seconds=next(walls), target_forwards=max_new_tokens)
        return types.SimpleNamespace(stats=stats)

    monkeypatch.setattr(bench_decode.specdec, "generate", fake_generate)
    per_step, _ = bench_decode.timed_step_seconds(None, [[1]], 256, repeats=3)
    assert per_step == pytest.approx(1.2 / 127)  # pairs: 1.0, 3.0, 1.2 s; 127 forwards apart
    with pytest.raises(StopIteration):
        next(walls)


def test_aligned_eagle_head_drafts_what_its_scaled_target_decodes():
    """bench_all's synthetic EAGLE-1 head: at scale 0 the scaled target predicts from its input
    embedding alone and so does the head (fc passes the embedding through), so greedy Chain(4)
    accepts every draft; a random head on the same target accepts almost none."""
    import jax.numpy as jnp
    import numpy as np

    import specdec
    from drafters import Eagle
    from experiments.bench_all import aligned_eagle, scaled_target
    from specdec.config import tiny_config
    from trees import Chain

    model = specdec.Model.random(tiny_config(vocab_size=512, num_layers=2), dtype=jnp.float32)
    target = scaled_target(model, 0.0)
    prompts = np.random.default_rng(0).integers(0, 512, (2, 8)).tolist()
    new = 21  # the first token comes from prefill; then 4 cycles of 5 tokens, none truncated
    aligned = specdec.generate(
        target, prompts, max_new_tokens=new, drafter=aligned_eagle(target, 0.0), policy=Chain(4)
    )
    assert aligned.stats.tau == pytest.approx(5.0)
    plain = specdec.generate(target, prompts, max_new_tokens=new)
    np.testing.assert_array_equal(aligned.tokens, plain.tokens)
    random = specdec.generate(
        target, prompts, max_new_tokens=new, drafter=Eagle.random(target), policy=Chain(4)
    )
    assert random.stats.tau < 2.0


def _tree_attn_section(monkeypatch, errors: dict):
    """Run bench_all's tree_attn section with bench_tree_attention.run_problem faked: XLA and
    cuDNN time 1 ms, the kernel fails with `errors["mosaic_gpu"]`."""
    from experiments import bench_all

    def fake_run_problem(problem, fns, timer, log):
        times = {k: ({"ms": 1.0} if k != "mosaic_gpu" else None) for k in fns}
        return {"times": times, "errors": {k: errors.get(k) for k in fns}}

    fns = {"mosaic_gpu": None, "xla": None, "cudnn": None}
    monkeypatch.setattr(bench_all.bta, "run_problem", fake_run_problem)
    monkeypatch.setattr(bench_all.bta, "implementations", lambda: fns)
    report = bench_all.Report(None, 0.0, float("inf"))
    ctx = dict(smoke=False, timer=None, bandwidth=4e12, peak=None)
    bench_all.section_tree_attn(report, ctx)
    return report


def test_tree_attn_reports_a_failed_kernel_as_a_miss_not_as_xla(monkeypatch):
    """Run 10: a kernel's measurement cut short was reported with XLA's time as the kernel's."""
    report = _tree_attn_section(monkeypatch, {"mosaic_gpu": "RuntimeError: boom"})
    rows = report.data["ratios"]
    assert len(rows) == 6
    for row in rows:
        assert row["met"] is False
        assert row["value"].startswith("n/a%")
        assert "mosaic_gpu: RuntimeError: boom" in row["note"]


def test_a_budget_passes_through_the_measurements_that_keep_going(monkeypatch):
    """bench_tree_attention.run_problem records any Exception of one implementation and goes on
    (run 10: it recorded the section's time budget as the kernel's error, and the section ran on
    past it). Budget is a BaseException, so it leaves run_problem and the section."""
    from experiments import bench_all
    from experiments.bench_all import Budget

    def over_budget():
        raise Budget("over its 60s budget")

    def failing():
        raise RuntimeError("boom")

    monkeypatch.setattr(bench_all.bta, "input_sets", lambda problem: [()])
    problem = bench_all.bta.Problem(1, 4, 256)
    row = bench_all.bta.run_problem(problem, {"xla": failing}, None, lambda msg: None)
    assert row["errors"]["xla"] == "RuntimeError: boom"  # an ordinary failure is recorded
    with pytest.raises(Budget, match="over its 60s budget"):
        bench_all.bta.run_problem(problem, {"mosaic_gpu": over_budget}, None, lambda msg: None)
    # Report.run records it as the section's error and the run goes on
    report = bench_all.Report(None, 0.0, float("inf"))
    report.run("tree_attn", 30, over_budget)
    assert report.data["sections"]["tree_attn"]["error"] == "Budget: over its 60s budget"


def test_hf_agreement_checks_line_up_tokens_with_the_logits_that_predict_them():
    """teacher_forced_top1 compares the logits at position i with token i + 1: a fake HF model
    whose argmax is always `token + 1` agrees fully with a sequence that follows that rule (a
    misaligned comparison would give 0) and on one token of six with a sequence that follows it
    once. equal_prefix counts leading matches."""
    import contextlib
    import types

    import numpy as np

    from experiments import bench_all

    vocab = 11

    class Array(np.ndarray):
        def cpu(self):
            return self

        def numpy(self):
            return np.asarray(self)

    class NextIsPlusOne:
        device = "cpu"

        def __call__(self, ids):
            ids = np.asarray(ids)
            logits = np.zeros((*ids.shape, vocab)).view(Array)
            np.put_along_axis(logits, ((ids + 1) % vocab)[..., None], 1.0, axis=-1)
            return types.SimpleNamespace(logits=logits)

    fake_torch = types.SimpleNamespace(
        no_grad=contextlib.nullcontext, tensor=lambda x, device: np.asarray(x)
    )
    prompts = [[3, 4, 5]]
    follows = np.array([[6, 7, 8, 9, 10, 0]])
    hf = NextIsPlusOne()
    assert bench_all.teacher_forced_top1(fake_torch, hf, prompts, follows) == 1.0
    repeats = np.array([[6, 6, 6, 6, 6, 6]])  # only the first follows the rule (5 -> 6)
    assert bench_all.teacher_forced_top1(fake_torch, hf, prompts, repeats) == pytest.approx(1 / 6)
    assert bench_all.equal_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert bench_all.equal_prefix([1, 2], [1, 2]) == 2
