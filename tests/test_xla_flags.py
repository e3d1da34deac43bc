"""specdec/xla_flags.py: the command-buffer flags `import specdec` adds to XLA_FLAGS."""

import os
import subprocess
import sys

from specdec import xla_flags

FLAGS = " ".join(xla_flags.COMMAND_BUFFER_FLAGS)


def test_flags_are_added_to_an_empty_or_unrelated_setting():
    env = {}
    assert xla_flags.apply(env, backends_initialized=False) == "added"
    assert env["XLA_FLAGS"] == FLAGS
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/d"}
    assert xla_flags.apply(env, backends_initialized=False) == "added"
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/d " + FLAGS


def test_a_flag_the_user_set_is_left_as_set():
    mine = "--xla_gpu_enable_command_buffer="  # command buffers off, the user's choice
    env = {"XLA_FLAGS": mine}
    assert xla_flags.apply(env, backends_initialized=False) == "added"
    assert env["XLA_FLAGS"] == mine + " --xla_gpu_graph_min_graph_size=1"
    env = {"XLA_FLAGS": FLAGS}
    assert xla_flags.apply(env, backends_initialized=False) == "already set"
    assert env["XLA_FLAGS"] == FLAGS


def test_opting_out_leaves_xla_flags_alone():
    for off in ("0", "false", "OFF", " no "):
        env = {xla_flags.OPT_OUT_ENV: off}
        assert xla_flags.apply(env, backends_initialized=False) == "opted out"
        assert "XLA_FLAGS" not in env


def test_after_a_backend_started_nothing_changes_and_a_cpu_does_not_warn(recwarn):
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/d"}
    assert xla_flags.apply(env, backends_initialized=True) == "too late"
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/d"
    assert not [w for w in recwarn if "specdec" in str(w.message)]


def _run(code: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.OPT_OUT_ENV)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**environ, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


def test_import_specdec_sets_the_flags_before_the_backend_reads_them():
    # jax imported first (no backend yet), then specdec: the flags reach XLA, which parses them
    code = (
        "import jax, os, specdec; jax.numpy.ones(2).block_until_ready(); "
        "print(specdec.xla_flags.STATUS, '|', os.environ['XLA_FLAGS'])"
    )
    assert _run(code) == f"added | {FLAGS}"
    late = "import jax; jax.numpy.ones(2); import specdec; print(specdec.xla_flags.STATUS)"
    assert _run(late) == "too late"
    assert _run("import specdec; print(specdec.xla_flags.STATUS)", SPECDEC_COMMAND_BUFFERS="0") == (
        "opted out"
    )
