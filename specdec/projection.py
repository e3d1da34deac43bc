"""The model's weight projections: one matmul x [B, T, ...] @ w [..., out], routed by size.

A decode step multiplies a few rows (B x T <= 16) by each weight matrix. XLA compiles those either
as GEMMs that stream the weights well below the HBM bandwidth, or (small matrices) as an
elementwise multiply that writes an f32 [K, N] product and a second kernel that reduces it. The
skinny-matmul kernel (`kernels_pallas.matvec_triton`) reads each weight once in one kernel.

SKINNY_ENV picks the path, read when a step is traced: "auto" (the kernel on a GPU for bf16 /
fp16 rows <= MAX_ROWS where it tiles the shape, else XLA), "xla", "pallas" (the kernel wherever
it tiles the shape; on CPU in interpret mode), "xla-two-rows" (an experiment: a one-row product
computed as two identical rows behind an optimisation barrier, which keeps XLA's GEMM instead of
its multiply + reduce rewrite).
"""

import math
import os

import jax
import jax.numpy as jnp

from specdec import sharding

SKINNY_ENV = "SPECDEC_SKINNY_MATMUL"
SKINNY_CHOICES = ("auto", "xla", "pallas", "xla-two-rows")
MAX_ROWS = 16  # B x T at most this many rows take the skinny kernel


def skinny_choice() -> str:
    """The SKINNY_ENV setting, checked."""
    choice = os.environ.get(SKINNY_ENV, "auto")
    if choice not in SKINNY_CHOICES:
        raise ValueError(f"{SKINNY_ENV}={choice!r}: expected one of {', '.join(SKINNY_CHOICES)}")
    return choice


def implementation(rows: int, k: int, n: int, dtype) -> str:
    """ "xla", "pallas" or "xla-two-rows": what `project` runs for x [rows, k] @ w [k, n]."""
    choice = skinny_choice()
    if choice == "xla" or rows > MAX_ROWS or sharding.active_mesh() is not None:
        return "xla"
    if choice == "xla-two-rows":
        return choice if rows == 1 else "xla"
    from kernels_pallas import matvec_triton

    if not matvec_triton.supports(rows, k, n):
        return "xla"
    if choice == "pallas":
        return "pallas"
    gpu = jax.default_backend() == "gpu"
    return "pallas" if gpu and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"


def project(
    spec: str, x: jax.Array, w: jax.Array, dtype, precision: jax.lax.Precision
) -> jax.Array:
    """jnp.einsum(spec, x, w) in `dtype` with float32 accumulation and a float32 result, where
    spec is "BT<c>,<c><o>->BT<o>": x [B, T, *c] contracts its trailing axes with w's leading."""
    x, w = x.astype(dtype), w.astype(dtype)
    inputs, out = spec.split("->")
    x_axes, w_axes = inputs.split(",")
    contracted, kept = x_axes[2:], w_axes[len(x_axes) - 2 :]
    rows, k = math.prod(x.shape[:2]), math.prod(x.shape[2:])
    n = math.prod(w.shape[len(contracted) :])
    matrix_form = w_axes.startswith(contracted) and out == x_axes[:2] + kept
    path = implementation(rows, k, n, dtype) if matrix_form else "xla"
    if path == "xla":
        return jnp.einsum(spec, x, w, precision=precision, preferred_element_type=jnp.float32)
    x2, w2 = x.reshape(rows, k), w.reshape(k, n)  # [M, K], [K, N]
    if path == "pallas":
        from kernels_pallas import matvec_triton

        y = matvec_triton.skinny_matmul(x2, w2, interpret=jax.default_backend() != "gpu")
    else:  # xla-two-rows: M = 1 as an M = 2 GEMM; the barrier keeps the slice out of the dot
        y = jnp.dot(
            jnp.concatenate([x2, x2]), w2, precision=precision, preferred_element_type=jnp.float32
        )
        y = jax.lax.optimization_barrier(y)[:1]
    return y.reshape(x.shape[:2] + w.shape[len(contracted) :])  # [B, T, *o]
