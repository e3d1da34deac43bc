"""specdec/xla_flags.py: the command-buffer flags `import specdec` adds to XLA_FLAGS."""

import os
import subprocess
import sys

from specdec import xla_flags

FLAGS = " ".join(xla_flags.COMMAND_BUFFER_FLAGS)


def test_flags_are_added_to_an_empty_or_unrelated_setting():
    env = {}
    assert xla_flags.apply(env, backends_initialized=False, cuda=True) == "added"
    assert env["XLA_FLAGS"] == FLAGS
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/d"}
    assert xla_flags.apply(env, backends_initialized=False, cuda=True) == "added"
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/d " + FLAGS


def test_a_flag_the_user_set_is_left_as_set():
    mine = "--xla_gpu_enable_command_buffer="  # command buffers off, the user's choice
    env = {"XLA_FLAGS": mine}
    assert xla_flags.apply(env, backends_initialized=False, cuda=True) == "added"
    assert env["XLA_FLAGS"] == mine + " --xla_gpu_graph_min_graph_size=1"
    env = {"XLA_FLAGS": FLAGS}
    assert xla_flags.apply(env, backends_initialized=False, cuda=True) == "already set"
    assert env["XLA_FLAGS"] == FLAGS


def test_opting_out_leaves_xla_flags_alone():
    for off in ("0", "false", "OFF", " no "):
        env = {xla_flags.OPT_OUT_ENV: off}
        assert xla_flags.apply(env, backends_initialized=False, cuda=True) == "opted out"
        assert "XLA_FLAGS" not in env


def test_after_a_backend_started_nothing_changes_and_a_cpu_does_not_warn(recwarn):
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/d"}
    assert xla_flags.apply(env, backends_initialized=True, cuda=True) == "too late"
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


def test_without_a_cuda_plugin_nothing_is_added():
    env = {}
    assert xla_flags.apply(env, backends_initialized=False, cuda=False) == "no CUDA"
    assert env == {}


def test_import_specdec_sets_the_flags_before_the_backend_reads_them():
    # jax imported first (no backend yet), then specdec; this CPU box has no CUDA plugin, so the
    # flags are added by hand, as `apply` adds them on a GPU machine: this jaxlib parses them
    status = "import jax, os, specdec; print(specdec.xla_flags.STATUS)"
    assert _run(status) == ("added" if xla_flags.cuda_plugin_installed() else "no CUDA")
    code = (
        "import jax, os; from specdec import xla_flags; "
        "print(xla_flags.apply(cuda=True), '|', os.environ['XLA_FLAGS']); "
        "print(float(jax.numpy.ones(2).sum()))"
    )
    assert _run(code).splitlines() == [f"added | {FLAGS}", "2.0"]
    late = (
        "import jax; jax.numpy.ones(2); from specdec import xla_flags; "
        "print(xla_flags.apply(cuda=True))"
    )
    assert _run(late) == "too late"
    assert _run(status, SPECDEC_COMMAND_BUFFERS="0") == "opted out"


def test_benchmarks_can_record_what_was_applied():
    text = xla_flags.describe()
    assert text.startswith(f"command buffers: {xla_flags.STATUS}; XLA_FLAGS=")
