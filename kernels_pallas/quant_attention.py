"""Attention over the hierarchical INT4/INT8 KV cache: the entry point the model calls.

`quant_attention` dispatches to a Pallas kernel (dequantising in-kernel from the packed planes) or
to `quant_attention_reference`; the format and the rule deciding which copy of a key a query reads
are in kernels_pallas/quant_reference.py.
"""

import jax

from kernels_pallas import quant_attention_tpu as _tpu
from kernels_pallas import quant_attention_triton as _triton
from kernels_pallas.quant_reference import QuantLayerView, quant_attention_reference

IMPLEMENTATIONS = ("auto", "xla", "pallas", "triton", "mosaic_gpu", "mosaic_tpu")


def quant_attention(
    q: jax.Array,  # [B, T, N, H]
    view: QuantLayerView,
    lengths: jax.Array,  # [B] int32
    region_mask: jax.Array,  # [B, T, R] bool
    *,
    scale: float | None = None,
    implementation: str = "auto",
    interpret: bool = False,
) -> jax.Array:  # [B, T, N, H] in q.dtype
    """Attention of T block queries over a quantised cache layer plus the block's region."""
    impl = resolve_implementation(implementation, q, view, interpret=interpret)
    if impl == "xla":
        return quant_attention_reference(q, view, lengths, region_mask, scale=scale)
    if impl == "mosaic_tpu":
        return _tpu.quant_attention_tpu(
            q, view, lengths, region_mask, scale=scale, interpret=interpret
        )
    return _triton.quant_attention_triton(
        q, view, lengths, region_mask, scale=scale, interpret=interpret
    )


def resolve_implementation(
    implementation: str, q: jax.Array, view: QuantLayerView, *, interpret: bool
) -> str:
    """The concrete code path ("xla", "triton" or "mosaic_tpu") for a request.

    "auto" and "pallas" use the Mosaic TPU kernel on TPU and the Triton kernel on GPU (and on CPU
    with interpret=True) when it serves the layout (`fits`), else the reference. There is no
    Mosaic GPU kernel for this cache yet: asking for one is an error.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"{implementation=} must be one of {IMPLEMENTATIONS}")
    if implementation == "mosaic_gpu":
        raise ValueError("no mosaic_gpu kernel for the quantised KV cache yet: use 'triton'")
    if implementation == "xla":
        return "xla"
    if implementation == "mosaic_tpu" or jax.default_backend() == "tpu":
        if _tpu.fits(q, view):
            return "mosaic_tpu"
        if implementation == "mosaic_tpu":
            raise ValueError(
                f"the TPU quantised-KV kernel does not serve this layout "
                f"(H={q.shape[-1]}, group={view.group}, value_group={view.value_group})"
            )
        return "xla"
    fits = _triton.fits(q, view)
    if implementation == "triton":
        if not fits:
            raise ValueError(
                f"the Triton quantised-KV kernel does not serve this layout "
                f"(H={q.shape[-1]}, group={view.group}, value_group={view.value_group})"
            )
        return "triton"
    on_gpu = jax.default_backend() in ("gpu", "cuda", "rocm")
    if fits and (on_gpu or interpret):
        return "triton"
    if implementation == "pallas" and not (on_gpu or interpret):
        raise ValueError(
            f"implementation='pallas' has no quantised-KV kernel for backend "
            f"{jax.default_backend()!r}; use 'auto' or 'xla', or interpret=True"
        )
    return "xla"
