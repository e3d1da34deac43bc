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
