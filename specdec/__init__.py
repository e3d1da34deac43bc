"""specdec: speculative decoding in JAX.

Dimension letters used in shape comments everywhere in this repository:

    B  batch                       S  KV-cache capacity (slots)
    T  tokens in the current block  R  width of the block's region in the cache (R >= T)
    P  prompt length (bucketed)     L  transformer layers
    N  query heads                  K  key/value heads (N = K * G, G query heads per KV head)
    H  head dim                     D  model width
    F  MLP hidden width             V  vocabulary
"""

# First: XLA reads XLA_FLAGS once, at the first backend initialisation (specdec/xla_flags.py).
from specdec import xla_flags  # noqa: F401  (adds the GPU command-buffer flags)
from specdec.config import ModelConfig, RopeConfig
from specdec.engine.generate import (
    GenerateOutput,
    GenerateStats,
    compiled_cache_size,
    generate,
)
from specdec.models import Model, load
from specdec.sampling import SamplingParams

__all__ = [
    "GenerateOutput",
    "GenerateStats",
    "Model",
    "ModelConfig",
    "RopeConfig",
    "SamplingParams",
    "compiled_cache_size",
    "generate",
    "load",
]
