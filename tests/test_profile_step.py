"""experiments/profile_step.py: the steady-step window, and a smoke run on the CPU."""

import json

from experiments import profile_step


def test_steady_step_is_one_step_of_launches_rotated_at_most_by_the_loop_exit():
    # prefill p0 p1 p2, ten steps of a b c, loop exit x0 x1; the shorter run has four steps
    step, steps = ["a", "b", "c"], 10
    ordered = ["p0", "p1", "p2"] + step * steps + ["x0", "x1"]
    outside = (3 + 4 * 3 + 2) - 4 * 3  # the shorter run's launches minus its steps'
    window = profile_step.steady_step(ordered, outside, steps, len(step))
    assert sorted(window) == sorted(step)
    assert window == ["c", "a", "b"]  # two exit kernels: rotated by two
    assert profile_step.steady_step(ordered, 3, steps, 3) == step  # no exit kernels


def test_smoke_run_writes_the_profile_and_the_optimised_hlo(tmp_path):
    profile_step.main(["--smoke", "--new", "8", "--prompt-len", "16", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "small_b1.json").read_text())
    assert result["steps"][0] > result["steps"][1] > 0
    assert result["device_ms_per_step"] > 0 and result["method"] in ("wall", "cupti")
    assert "while" in (tmp_path / "small_b1_hlo.txt").read_text()
