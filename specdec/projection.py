"""The model's weight projections: one matmul x [B, T, ...] @ w [..., out], routed by size.

A decode step multiplies a few rows (B x T <= 16) by each weight matrix. XLA compiles those either
as GEMMs that stream the weights well below the HBM bandwidth, or (small matrices) as an
elementwise multiply that writes an f32 [K, N] product and a second kernel that reduces it. The
skinny-matmul kernel (`kernels_pallas.matvec_triton`) reads each weight once in one kernel.

SKINNY_ENV picks the path, read when a step is traced: "auto" (the kernel on a GPU for bf16 /
fp16 where it measured faster than XLA: `matvec_triton.pays`, else XLA), "xla", "pallas" (the
kernel wherever it tiles B x T <= MAX_ROWS rows; on CPU in interpret mode). (An experiment that
kept XLA's GEMM at one row, the row doubled behind an optimisation barrier, bought 3% of the
`small` step against the kernel's 24%: experiments/results/perf_h200_run7.)
"""

import functools
import math
import os

import jax
import jax.numpy as jnp

from specdec import sharding

SKINNY_ENV = "SPECDEC_SKINNY_MATMUL"
SKINNY_CHOICES = ("auto", "xla", "pallas")
MAX_ROWS = 16  # B x T at most this many rows take the skinny kernel


def skinny_choice() -> str:
    """The SKINNY_ENV setting, checked."""
    choice = os.environ.get(SKINNY_ENV, "auto")
    if choice not in SKINNY_CHOICES:
        raise ValueError(f"{SKINNY_ENV}={choice!r}: expected one of {', '.join(SKINNY_CHOICES)}")
    return choice


def implementation(rows: int, k: int, n: int, dtype) -> str:
    """ "xla" or "pallas": what `project` runs for x [rows, k] @ w [k, n]."""
    choice = skinny_choice()
    if choice == "xla" or rows > MAX_ROWS or sharding.active_mesh() is not None:
        return "xla"
    from kernels_pallas import matvec_triton

    if choice == "pallas":
        return "pallas" if matvec_triton.supports(rows, k, n) else "xla"
    gpu, low = jax.default_backend() == "gpu", jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    return "pallas" if gpu and low and matvec_triton.pays(rows, k, n) else "xla"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3, 4))
def _low_precision_einsum(spec: str, x: jax.Array, w: jax.Array, dtype, precision) -> jax.Array:
    return jnp.einsum(
        spec,
        x.astype(dtype),
        w.astype(dtype),
        precision=precision,
        preferred_element_type=jnp.float32,
    )


def _low_precision_fwd(spec, x, w, dtype, precision):
    x_low, w_low = x.astype(dtype), w.astype(dtype)
    out = jnp.einsum(spec, x_low, w_low, precision=precision, preferred_element_type=jnp.float32)
    return out, (x_low, w_low, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _low_precision_bwd(spec, dtype, precision, residuals, grad):
    x_low, w_low, x_type, w_type = residuals
    (x_axes, w_axes), out_axes = spec.split("->")[0].split(","), spec.split("->")[1]
    grad = grad.astype(dtype)  # the product's cotangent in the compute dtype: low-precision GEMMs
    dx = jnp.einsum(
        f"{out_axes},{w_axes}->{x_axes}",
        grad,
        w_low,
        precision=precision,
        preferred_element_type=jnp.float32,
    )
    dw = jnp.einsum(
        f"{x_axes},{out_axes}->{w_axes}",
        x_low,
        grad,
        precision=precision,
        preferred_element_type=jnp.float32,
    )
    return dx.astype(x_type.dtype), dw.astype(w_type.dtype)


_low_precision_einsum.defvjp(_low_precision_fwd, _low_precision_bwd)


def einsum_f32(spec: str, x: jax.Array, w: jax.Array, dtype, precision) -> jax.Array:
    """jnp.einsum(spec, x, w) with both operands cast to `dtype` and a float32 product. For a
    16-bit `dtype` the backward pass casts the product's float32 cotangent to `dtype` first, so
    both of its matmuls run in `dtype` with float32 accumulation (autodiff of the plain einsum
    would upcast the other operand and run them as float32 GEMMs); the gradients come back in
    x's and w's own dtypes (w's float32 master weights get a float32 gradient). Spec: explicit
    axes, each in exactly two of the three terms."""
    if jnp.dtype(dtype) == jnp.float32:
        return jnp.einsum(
            spec,
            x.astype(dtype),
            w.astype(dtype),
            precision=precision,
            preferred_element_type=jnp.float32,
        )
    return _low_precision_einsum(spec, x, w, dtype, precision)


def project(
    spec: str, x: jax.Array, w: jax.Array, dtype, precision: jax.lax.Precision
) -> jax.Array:
    """jnp.einsum(spec, x, w) in `dtype` with float32 accumulation and a float32 result, where
    spec is "BT<c>,<c><o>->BT<o>": x [B, T, *c] contracts its trailing axes with w's leading."""
    inputs, out = spec.split("->")
    x_axes, w_axes = inputs.split(",")
    contracted, kept = x_axes[2:], w_axes[len(x_axes) - 2 :]
    rows, k = math.prod(x.shape[:2]), math.prod(x.shape[2:])
    n = math.prod(w.shape[len(contracted) :])
    matrix_form = w_axes.startswith(contracted) and out == x_axes[:2] + kept
    path = implementation(rows, k, n, dtype) if matrix_form else "xla"
    if path == "xla":
        return einsum_f32(spec, x, w, dtype, precision)
    x, w = x.astype(dtype), w.astype(dtype)
    x2, w2 = x.reshape(rows, k), w.reshape(k, n)  # [M, K], [K, N]
    from kernels_pallas import matvec_triton

    y = matvec_triton.skinny_matmul(x2, w2, interpret=jax.default_backend() != "gpu")
    return y.reshape(x.shape[:2] + w.shape[len(contracted) :])  # [B, T, *o]
