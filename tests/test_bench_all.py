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
