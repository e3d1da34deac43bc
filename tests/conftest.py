"""Shared test setup: CPU-friendly XLA flags, float32 everywhere, fixtures for tiny models."""

import os
import warnings

# XLA:CPU spends most test time compiling; its backend optimisations buy nothing on tiny models.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
HF_FIXTURES = (
    "llama",
    "llama3_rope",
    "llama_linear_rope",
    "mistral",
    "qwen2",
    "qwen3",
    "llama_bf16_sharded",
)

warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code():
    """Free compiled executables after each test module.

    Each XLA:CPU executable holds hundreds of memory mappings (about 800 for one decode loop
    here), and a pytest worker that keeps every executable of ~170 tests passes Linux's default
    vm.max_map_count (65530): the next compile then segfaults inside XLA. Clearing per module
    keeps a worker far below it.
    """
    yield
    import gc

    import jax

    from specdec.engine.generate import clear_compiled_loops

    clear_compiled_loops()
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def llama():
    """The float32 `llama` parity fixture as a Model (XLA attention)."""
    import specdec

    return specdec.load(FIXTURES / "llama", dtype="float32", attention="xla")


@pytest.fixture(scope="session")
def tiny_draft():
    """A different random 2-layer model with the llama fixture's vocabulary (a poor drafter)."""
    import specdec
    from specdec.config import tiny_config

    return specdec.Model.random(tiny_config(vocab_size=128), seed=7, attention="xla")


@pytest.fixture(scope="session")
def vocab4_target():
    """A 4-token-vocabulary target with peaked logits, for the statistical losslessness tests."""
    import specdec
    from specdec.config import tiny_config

    cfg = tiny_config(
        vocab_size=4,
        hidden_size=16,
        intermediate_size=32,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        initializer_range=0.8,
    )
    return specdec.Model.random(cfg, seed=11, attention="xla")
