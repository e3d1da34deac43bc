"""Multi-device (specdec.sharding): tensor and data parallelism on a CPU mesh of 8 host devices.

The pytest process has already started jax with one device, so the mesh checks run once in a
subprocess (tests/sharding_checks.py, started with --xla_force_host_platform_device_count=8) that
prints one JSON line per measurement; the tests below assert on those lines. In-process tests
cover what needs no second device: mesh parsing, the rule table, CLI errors.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from specdec import sharding
from specdec.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
CHECKS = REPO / "tests" / "sharding_checks.py"
LOSS_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def results() -> list[dict]:
    """Every JSON line the 8-device subprocess printed (all checks, one jax start)."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}",
    }
    proc = subprocess.run(
        [sys.executable, str(CHECKS)], cwd=REPO, env=env, capture_output=True, text=True
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    crashes = [r["traceback"] for r in lines if r["check"] == "crash"]
    assert not crashes, "\n".join(crashes)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert lines[0] == {"check": "devices", "count": 8}
    return lines


def _rows(results, check, **match) -> list[dict]:
    rows = [r for r in results if r["check"] == check and all(r[k] == v for k, v in match.items())]
    assert rows, f"no {check} result for {match}"
    return rows


@pytest.mark.parametrize("mesh", ["1x8", "2x4", "8x1"])
@pytest.mark.parametrize("drafter", ["plain", "draft", "eagle3"])
def test_greedy_output_on_a_mesh_equals_one_device(results, mesh, drafter):
    (row,) = _rows(results, "generate", mesh=mesh, drafter=drafter)
    assert row["equal"], row
    assert row["tau"] == pytest.approx(row["reference_tau"])
    model = int(mesh.split("x")[1])
    assert row["qkv_devices"] == 8
    # [D, K / model, G + 2, H]: split by KV head, each device holding whole query groups
    assert row["qkv_shard"] == [64, 8 // model, 16 // 8 + 2, 8]
    # XLA partitions as planned: no weight or K/V block is gathered whole on a device (the cache
    # write is row-local), and the residual stream is all-reduced (2 per layer and forward).
    assert row["weight_gathers"] == [] and row["kv_gathers"] == [], row
    assert row["all_reduces"] >= (2 * 2 * 2 if model > 1 else 0)  # prefill + step, 2 layers


def test_pallas_kernel_runs_per_shard(results):
    (row,) = _rows(results, "kernel")
    assert row["equal"], row


def test_sampling_on_a_mesh_keeps_the_target_law(results):
    (row,) = _rows(results, "stats")
    assert row["pvalue"] > 1e-3, row
    assert row["tau"] > 1.1  # drafts were accepted, so the speculative law was exercised
    # Same seed, same samples as one device (the partitionable PRNG; logits equal to float
    # rounding), so the single-device stats tests cover the mesh too.
    assert row["same_samples_as_one_device"] > 0.99, row
    assert row["same_weights_as_one_device"] is True, row
    assert row["lm_head_spec"] == [None, "model"]  # the LM head (so the logits) split by vocab


@pytest.mark.parametrize("check", ["train_target", "train_eagle"])
def test_training_steps_on_a_mesh_match_one_device(results, check):
    for row in _rows(results, check):
        np.testing.assert_allclose(row["losses"], row["reference"], atol=LOSS_TOLERANCE, rtol=0)
        if "heldout" in row:
            assert abs(row["heldout"] - row["reference_heldout"]) < LOSS_TOLERANCE


@pytest.mark.parametrize(
    "case,words",
    [
        ("axis_names", "('data', 'model')"),
        ("not_a_mesh", "jax.sharding.Mesh"),
        ("heads", "num_heads=4 is not divisible"),
        ("too_many_devices", "needs 16 devices but only 8"),
        ("malformed", "DATAxMODEL"),
        ("batch", "batch size 3 is not divisible"),
    ],
)
def test_bad_meshes_and_sizes_are_clear_errors(results, case, words):
    (row,) = _rows(results, "error", case=case)
    assert row["raised"] is not None, f"{case} raised nothing"
    assert words in row["message"], row["message"]


# ---- in process (one device) ------------------------------------------------------------------


def test_parse_mesh():
    assert sharding.parse_mesh("2x4") == (2, 4)
    assert sharding.parse_mesh(" 1X2 ") == (1, 2)
    for bad in ("2", "2x", "x2", "0x2", "2x4x1", "-1x2", "a x b"):
        with pytest.raises(ValueError, match=r"DATAxMODEL|>= 1"):
            sharding.parse_mesh(bad)


def test_rule_table_gives_the_megatron_layout():
    mesh = sharding.make_mesh(1, 1)
    P = jax.sharding.PartitionSpec
    assert sharding.spec(("embed", "heads", "head_dim"), (64, 8, 8), mesh) == P(None, "model")
    assert sharding.spec(("mlp", "embed"), (128, 64), mesh) == P("model")
    assert sharding.spec(("batch", "cache_seq", "kv_heads"), (4, 128, 2, 8), mesh) == P(
        "data", None, "model"
    )
    assert set(sharding.RULES.values()) <= {None, "data", "model"}


def test_single_device_models_have_no_mesh(llama):
    assert llama.mesh is None
    assert "mesh" not in repr(llama)


def test_cli_mesh_errors(capsys):
    model = str(REPO / "tests" / "fixtures" / "hf" / "llama")
    for mesh, words in (("2by4", "DATAxMODEL"), ("4x4", "needs 16 devices but only 1")):
        status = cli_main(["generate", "--model", model, "--prompt", "hi", "--mesh", mesh])
        err = capsys.readouterr().err
        assert status == 2 and words in err, err


def test_training_cli_mesh_errors(tmp_path, capsys):
    from train import eagle, target

    for main, argv in (
        (target.main, ["--out", str(tmp_path / "t")]),
        (eagle.main, ["--target", str(tmp_path), "--version", "1", "--out", str(tmp_path / "e")]),
    ):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--mesh", "2x"])
        assert exit_.value.code == 2
        assert "DATAxMODEL" in capsys.readouterr().err


def test_cli_mesh_one_by_one_matches_no_mesh(capsys):
    """--mesh runs the whole CLI path (target and draft loaded on the mesh); a 1x1 mesh gives
    the same text as no mesh."""
    from train.reference import reference_pair

    target_dir, draft_dir = reference_pair("tiny")
    argv = ["generate", "--model", str(target_dir), "--draft-model", str(draft_dir)]
    argv += ["--prompt", "Hello", "--max-new-tokens", "8", "--dtype", "float32"]
    texts = []
    for extra in ([], ["--mesh", "1x1"]):
        assert cli_main([*argv, *extra]) == 0
        texts.append(capsys.readouterr().out.rsplit("---", 1)[0])  # drop the timing line
    assert texts[0] == texts[1]
