"""experiments/profile_train.py: its variant syntax and a CPU smoke run (wall clock, tiny model)."""

import json

import pytest

from experiments import profile_train


def test_variant_keys_and_values_are_checked():
    assert profile_train.parse_variant("batch=4,attention=xla")["batch"] == 4
    with pytest.raises(ValueError, match="key=value"):
        profile_train.parse_variant("batches=4")
    with pytest.raises(ValueError, match="attention='flash'"):
        profile_train.parse_variant("attention=flash")


def test_smoke_run_writes_each_variant(tmp_path):
    profile_train.main(
        ["--smoke", "--out", str(tmp_path), "--variant", "batch=2,seq=16,attention=xla"]
    )
    rows = json.loads((tmp_path / "train_profile.json").read_text())["rows"]
    assert len(rows) == 1 and "error" not in rows[0]
    assert rows[0]["variant"]["seq"] == 16 and rows[0]["wall_ms"] > 0
    assert list(tmp_path.glob("*_hlo.txt"))  # the compiled step of the first variant
