"""experiments/gpu_speculation.py's call planning (its GPU phases run in the device calls)."""

import argparse

import pytest

from experiments import gpu_speculation as gs


def test_a_training_the_deadline_starves_is_skipped_not_saved(tmp_path):
    """gpu_speculation's budget: what later phases need is kept back only when the call runs
    them; less than half a training's cap skips the phase (recorded) instead of saving a head
    trained for seconds."""
    args = argparse.Namespace(
        smoke=True, work=str(tmp_path / "work"), out=str(tmp_path / "out"), deadline_s=100.0
    )
    session = gs.Session(args)
    session.later = ("eval_eagle",)
    assert 60 < session.budget(90, later=30) <= 70  # ~100 s left, 30 kept for eval_eagle
    with pytest.raises(gs.PhaseSkipped, match="run it in a call of its own"):
        session.budget(60, later=80)  # ~20 s of a 60 s cap
    session.later = ()  # the call's last phase: nothing kept back
    assert session.budget(60, later=80) == 60
    with pytest.raises(gs.PhaseSkipped):
        session.budget(60, own=80)  # its own second training is always kept back
    session.eagle1 = lambda: session.budget(10_000)  # a skipped phase is recorded, run goes on
    session.run(["eagle1"])
    assert "run it in a call of its own" in session.results.data["skipped"]["eagle1"]
    assert "eagle1" in session.results.data["phases"]
