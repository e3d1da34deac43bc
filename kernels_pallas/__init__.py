"""Attention kernels for tree verification: Pallas (Mosaic GPU, Triton, Mosaic TPU) and a reference.

`tree_attention` is the one entry point the model calls at every layer. Its contract is
`tree_attention_reference` (kernels_pallas/reference.py); `implementation` picks the code path:

- "xla": the pure-jnp reference (dense [B, T, S] mask built in the graph).
- "pallas": the best Pallas kernel for the current backend: Mosaic GPU on Hopper and newer
  (bf16/fp16 with H % 64 == 0 and S % 64 == 0, else the Triton kernel), Triton on other GPUs,
  Mosaic TPU on TPU; the reference where S fits no kernel's key blocks (see
  `resolve_implementation`). On CPU it raises unless `interpret=True`, which runs the Triton
  kernel in interpret mode.
- "auto": "pallas" where a kernel exists for the backend, else "xla" (so CPU runs the reference).
- "mosaic_gpu", "triton", "mosaic_tpu": that kernel, whatever the backend (tests, benchmarks).

Kernel outputs for a query row that sees no key at all (lengths[b] == 0 and an empty region row) are
zeros, where the reference averages every cache slot; both are finite and no model reads such rows.
"""

import jax
import jax.numpy as jnp

from kernels_pallas import tree_attention_mosaic_gpu as _mosaic_gpu
from kernels_pallas import tree_attention_tpu as _tpu
from kernels_pallas import tree_attention_triton as _triton
from kernels_pallas.quant_attention import quant_attention
from kernels_pallas.quant_reference import quant_attention_reference
from kernels_pallas.reference import tree_attention_reference

IMPLEMENTATIONS = ("auto", "xla", "pallas", "mosaic_gpu", "triton", "mosaic_tpu")


def _gpu_is_hopper_or_newer() -> bool:
    capability = getattr(jax.devices()[0], "compute_capability", "0")
    try:
        return int(str(capability).split(".")[0]) >= 9
    except ValueError:  # ROCm reports e.g. "gfx942"
        return False


def _mosaic_gpu_fits(q: jax.Array, k: jax.Array) -> bool:
    return q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] % 64 == 0 and k.shape[1] % 64 == 0


def resolve_implementation(
    implementation: str, q: jax.Array, k: jax.Array, *, interpret: bool
) -> str:
    """The concrete code path ("xla", "mosaic_gpu", "triton" or "mosaic_tpu") for a request.

    "auto" and "pallas" fall back to "xla" for shapes no kernel tiles (cache slots S not a multiple
    of the kernels' smallest key block: 16 on GPU, 128 on TPU), e.g. a prefill over an odd-length
    block with no cache.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"{implementation=} must be one of {IMPLEMENTATIONS}")
    if implementation not in ("auto", "pallas"):
        return implementation
    num_slots = k.shape[1]
    backend = jax.default_backend()
    if backend == "tpu":
        return "mosaic_tpu" if num_slots % _tpu.BLOCK_K_CHOICES[-1] == 0 else "xla"
    if backend in ("gpu", "cuda", "rocm"):
        if (
            backend != "rocm"
            and not interpret
            and _gpu_is_hopper_or_newer()
            and _mosaic_gpu_fits(q, k)
        ):
            return "mosaic_gpu"
        return "triton" if num_slots % _triton.BLOCK_K_CHOICES[-1] == 0 else "xla"
    if interpret:
        return "triton" if num_slots % _triton.BLOCK_K_CHOICES[-1] == 0 else "xla"
    if implementation == "auto":
        return "xla"
    raise ValueError(
        f"implementation='pallas' has no kernel for backend {backend!r}; use 'auto' or 'xla', "
        "or interpret=True to run the Triton kernel in interpret mode"
    )


def tree_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    lengths: jax.Array,  # [B] int32
    region_mask: jax.Array,  # [B, T, R] bool
    *,
    scale: float | None = None,
    implementation: str = "auto",
    interpret: bool = False,
) -> jax.Array:  # [B, T, N, H] in q.dtype
    """Attention of T block queries over the cached prefix plus the block's own region."""
    impl = resolve_implementation(implementation, q, k, interpret=interpret)
    if impl == "xla":
        return tree_attention_reference(q, k, v, lengths, region_mask, scale=scale)
    if impl == "mosaic_gpu":
        return _mosaic_gpu.tree_attention_mosaic_gpu(
            q, k, v, lengths, region_mask, scale=scale, interpret=interpret
        )
    if impl == "mosaic_tpu":
        return _tpu.tree_attention_tpu(
            q, k, v, lengths, region_mask, scale=scale, interpret=interpret
        )
    return _triton.tree_attention_triton(
        q, k, v, lengths, region_mask, scale=scale, interpret=interpret
    )


__all__ = [
    "IMPLEMENTATIONS",
    "quant_attention",
    "quant_attention_reference",
    "resolve_implementation",
    "tree_attention",
    "tree_attention_reference",
]
