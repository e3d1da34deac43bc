"""The XLA flags specdec turns on for GPUs: whole decode loops as CUDA graphs.

The decode loop is one `lax.while_loop` whose trip count depends on the data. With XLA's default
command buffers on the GPU, the host reads the loop predicate after every step and launches the
next step's kernels itself; a step of a 100M model is ~190 kernels of 1-5 us, so the host's
launches and round trip are a large part of it. With `+WHILE` (and `+CONDITIONAL`, the cache
flush's and the samplers' `lax.cond`s) XLA records the loop as one CUDA graph whose condition is
evaluated on the device, and `graph_min_graph_size=1` lets every kernel sequence join a graph.
Measured on an H200 (experiments/results/perf_h200_run8, wall clock, same machine, one process
per flag set): `small` plain step at batch 1 0.507 -> 0.321 ms, at batch 8 with 4k-token prompts
0.580 -> 0.458 ms, a QuantSpec Chain(5) cycle there 4.25 -> 3.26 ms, Llama-3-8B shape batch 1 /
8 4.92 -> 4.50 / 4.72 -> 4.43 ms; a `small` training step unchanged (27.5 ms).

Where JAX's CUDA plugin is installed, `import specdec` adds the flags to the XLA_FLAGS environment
variable, which XLA reads once, when JAX first initialises a backend: importing specdec before any
JAX computation applies them. A flag named in XLA_FLAGS already is left as the user set it;
SPECDEC_COMMAND_BUFFERS=0 leaves XLA_FLAGS alone. Without a CUDA plugin (CPU, TPU) nothing is added.
"""

import os
import warnings

#: what `apply` adds to XLA_FLAGS, each unless the user's XLA_FLAGS names it already
COMMAND_BUFFER_FLAGS = (
    "--xla_gpu_enable_command_buffer=+CONDITIONAL,+WHILE",
    "--xla_gpu_graph_min_graph_size=1",
)
#: "0" (or "false", "off", "no"): leave XLA_FLAGS as it is
OPT_OUT_ENV = "SPECDEC_COMMAND_BUFFERS"
_OFF = ("0", "false", "off", "no")


def _name(flag: str) -> str:
    return flag.split("=", 1)[0]


def with_command_buffers(xla_flags: str) -> str:
    """`xla_flags` (an XLA_FLAGS value) with each of COMMAND_BUFFER_FLAGS appended whose flag name
    it does not already contain."""
    present = {_name(f) for f in xla_flags.split()}
    missing = [f for f in COMMAND_BUFFER_FLAGS if _name(f) not in present]
    return " ".join([xla_flags.strip(), *missing]).strip()


def opted_out(environ=os.environ) -> bool:
    """Whether SPECDEC_COMMAND_BUFFERS asks specdec to leave XLA_FLAGS alone."""
    return environ.get(OPT_OUT_ENV, "1").strip().lower() in _OFF


def apply(
    environ=os.environ, backends_initialized: bool | None = None, cuda: bool | None = None
) -> str:
    """Add the command-buffer flags to environ["XLA_FLAGS"] (see the module doc) -> what happened:
    "added", "already set" (the user's XLA_FLAGS names them all), "opted out", "no CUDA" (no CUDA
    plugin for JAX installed), or "too late" (a JAX backend was initialised before: XLA has read
    its flags; on a GPU this warns). `backends_initialized` / `cuda`: None asks this process."""
    if opted_out(environ):
        return "opted out"
    if not (cuda_plugin_installed() if cuda is None else cuda):
        return "no CUDA"
    before = environ.get("XLA_FLAGS", "")
    after = with_command_buffers(before)
    if after == before.strip():
        return "already set"
    if backends_initialized is None:
        backends_initialized = _backends_initialized()
    if backends_initialized:
        _warn_if_gpu()
        return "too late"
    environ["XLA_FLAGS"] = after
    return "added"


def cuda_plugin_installed() -> bool:
    """Whether JAX's CUDA plugin is installed (found without importing it or starting JAX)."""
    import importlib.util

    names = (
        "jax_cuda13_plugin",
        "jax_cuda12_plugin",
        "jax_plugins.xla_cuda13",
        "jax_plugins.xla_cuda12",
    )
    for name in names:
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):  # jax_plugins absent: the dotted names cannot resolve
            continue
    return False


def _backends_initialized() -> bool:
    """Whether JAX has created a backend in this process (then XLA has parsed XLA_FLAGS)."""
    import sys

    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without it: assume not, as at a fresh start
        return False


def _warn_if_gpu() -> None:
    import jax

    if jax.default_backend() == "gpu":
        warnings.warn(
            "JAX initialised its GPU backend before `import specdec`, so XLA read XLA_FLAGS "
            "without specdec's command-buffer flags: decode loops return to the host every step "
            "(a 100M model's step measured 1.6x slower). Import specdec before any JAX "
            f"computation, or set XLA_FLAGS='{' '.join(COMMAND_BUFFER_FLAGS)}' yourself "
            f"({OPT_OUT_ENV}=0 silences this).",
            stacklevel=3,
        )


def describe() -> str:
    """What a benchmark should record: `STATUS` and the XLA_FLAGS this process started with."""
    return f"command buffers: {STATUS}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"


#: what `import specdec` did (`apply`'s answer)
STATUS = apply()
