"""The model's weight projections: one matmul x [B, T, ...] @ w [..., out], routed by size.

A decode step multiplies a few rows (B x T <= 16) by each weight matrix. XLA compiles those either
as GEMMs that stream the weights well below the HBM bandwidth, or (small matrices) as an
elementwise multiply that writes an f32 [K, N] product and a second kernel that reduces it. The
skinny-matmul kernel (`kernels_pallas.matvec_triton`) reads each weight once in one kernel.

SKINNY_ENV picks the path, read when a step is traced: "auto" (the kernel on a GPU for bf16 /
fp16 where it measured faster than XLA: `matvec_triton.pays`, else XLA), "xla", "pallas" (the
kernel wherever it tiles the shape, B x T <= matvec_triton.MAX_ROWS rows; on CPU in interpret
mode). (An experiment that kept XLA's GEMM at one row, the row doubled behind an optimisation
barrier, bought 3% of the `small` step against the kernel's 24%; perf_h200_run7 in results.)

A pre-norm projection can take its input as `NormedRows` (x with the RMSNorm still to apply):
`project` computes the norm's factors first (`rms_factors`: x * weight, and 1 / rms(x) applied to
the float32 product as its row scale), then projects x * weight on either path. (Computing the
statistic inside the skinny-matmul kernel was tried and measured slower on the H200, every program
summing the whole row's squares: wall ms a step 0.389 / 0.393 against 0.3145 / 0.3147 for `small`
at batch 1, 5.811 against 4.446 for the 8B shape; run 9, experiments/results/perf_h200_run9.)
"""

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp

from kernels_pallas import matvec_triton
from specdec import sharding
from specdec.quant_weights import QuantWeight

SKINNY_ENV = "SPECDEC_SKINNY_MATMUL"
SKINNY_CHOICES = ("auto", "xla", "pallas")


@dataclasses.dataclass(frozen=True)
class NormedRows:
    """Rows x [B, T, D] to be RMS-normalised (weight [D], eps) by the projection that takes them."""

    x: jax.Array  # [B, T, D]
    weight: jax.Array  # [D]
    eps: float

    def factors(self) -> tuple[jax.Array, jax.Array]:
        """`rms_factors` of these rows."""
        return rms_factors(self.x, self.weight, self.eps)


def rms_factors(x: jax.Array, weight: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
    """x [..., D] -> (x * weight [..., D] in x.dtype, 1 / rms(x) [..., 1] float32): RMSNorm as two
    factors, the per-token one applied to the next projection's float32 product (statistics in
    float32, as HF computes them)."""
    xf = x.astype(jnp.float32)
    return (weight.astype(jnp.float32) * xf).astype(x.dtype), inv_rms(xf, eps)


def inv_rms(xf: jax.Array, eps: float) -> jax.Array:
    """xf [..., D] float32 -> 1 / rms [..., 1] (RMSNorm's statistic)."""
    return jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)


def skinny_choice() -> str:
    """The SKINNY_ENV setting, checked."""
    choice = os.environ.get(SKINNY_ENV, "auto")
    if choice not in SKINNY_CHOICES:
        raise ValueError(f"{SKINNY_ENV}={choice!r}: expected one of {', '.join(SKINNY_CHOICES)}")
    return choice


def implementation(rows: int, k: int, n: int, dtype) -> str:
    """ "xla" or "pallas": what `project` runs for x [rows, k] @ w [k, n]."""
    choice = skinny_choice()
    if choice == "xla" or sharding.active_mesh() is not None:
        return "xla"
    if choice == "pallas":
        return "pallas" if matvec_triton.supports(rows, k, n) else "xla"
    gpu, low = jax.default_backend() == "gpu", jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    return "pallas" if gpu and low and matvec_triton.pays(rows, k, n) else "xla"


def _rows(scale: jax.Array, ndim: int) -> jax.Array:
    """A per-token factor [B, T, 1] shaped to broadcast over an [B, T, ...] array of `ndim`."""
    return scale.reshape(scale.shape[:2] + (1,) * (ndim - 2))


def _product(spec, x, w, row_scale, dtype, precision) -> jax.Array:
    out = jnp.einsum(
        spec,
        x.astype(dtype),
        w.astype(dtype),
        precision=precision,
        preferred_element_type=jnp.float32,
    )
    return out if row_scale is None else out * _rows(row_scale, out.ndim)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4, 5))
def _mixed_product(spec, x, w, row_scale, dtype, precision) -> jax.Array:
    return _product(spec, x, w, row_scale, dtype, precision)


def _mixed_fwd(spec, x, w, row_scale, dtype, precision):
    x_low, w_low = x.astype(dtype), w.astype(dtype)
    out = _product(spec, x_low, w_low, row_scale, dtype, precision)
    kinds = (jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))  # the dtypes to return
    return out, (x_low, w_low, row_scale, kinds)


def _mixed_bwd(spec, dtype, precision, residuals, grad):
    x_low, w_low, scale, (x_kind, w_kind) = residuals
    (x_axes, w_axes), out_axes = spec.split("->")[0].split(","), spec.split("->")[1]
    f32 = jnp.float32
    grad = grad.astype(dtype)  # the product's cotangent in the compute dtype: low-precision GEMMs
    dx = jnp.einsum(  # the unscaled g @ w^T, [B, T, *x]
        f"{out_axes},{w_axes}->{x_axes}",
        grad,
        w_low,
        precision=precision,
        preferred_element_type=f32,
    )
    x_for_w, d_scale = x_low, None
    if scale is not None:
        rows = _rows(scale, dx.ndim)
        # d scale = sum over the product's features of g * (x @ w) = sum over x's of x * (g @ w^T):
        # a reduction over x's features, not over the (larger) product's.
        d_scale = jnp.sum(x_low.astype(f32) * dx, axis=tuple(range(2, dx.ndim)))
        d_scale = d_scale.reshape(scale.shape).astype(scale.dtype)
        dx = dx * rows
        x_for_w = (x_low.astype(f32) * rows).astype(dtype)
    dw = jnp.einsum(
        f"{x_axes},{out_axes}->{w_axes}",
        x_for_w,
        grad,
        precision=precision,
        preferred_element_type=f32,
    )
    return dx.astype(x_kind.dtype), dw.astype(w_kind.dtype), d_scale


_mixed_product.defvjp(_mixed_fwd, _mixed_bwd)


def einsum_f32(
    spec: str, x: jax.Array, w: jax.Array, dtype, precision, row_scale: jax.Array | None = None
) -> jax.Array:
    """jnp.einsum(spec, x, w) with both operands cast to `dtype` and a float32 product, each token's
    row times `row_scale` [B, T, 1] if given (spec "BT...": x's first two axes are the product's).

    For a 16-bit `dtype` the backward pass is written by hand: the product's float32 cotangent is
    cast to `dtype` first, so both matmuls run in `dtype` with float32 accumulation (autodiff of
    the plain einsum would upcast the other operand and run them as float32 GEMMs), and the
    gradient of `row_scale` is reduced over x's features instead of the product's (autodiff would
    keep the float32 product for it). Gradients come back in x's, w's and row_scale's own dtypes.
    Spec: explicit axes (or "..."), each in exactly two of the three terms. w may be a
    `QuantWeight` (4-bit draft weights): its dequantised value."""
    if isinstance(w, QuantWeight):  # 4-bit draft weights: dequantised where XLA can fuse it
        w = w.dequantize(dtype)
    if jnp.dtype(dtype) == jnp.float32:
        return _product(spec, x, w, row_scale, dtype, precision)
    return _mixed_product(spec, x, w, row_scale, dtype, precision)


def project(
    spec: str,
    x: jax.Array,
    w: jax.Array,
    dtype,
    precision: jax.lax.Precision,
    row_scale: jax.Array | None = None,
) -> jax.Array:
    """jnp.einsum(spec, x, w) in `dtype` with float32 accumulation and a float32 result (each
    token's row times `row_scale` [B, T, 1] if given), where spec is "BT<c>,<c><o>->BT<o>": x
    [B, T, *c] contracts its trailing axes with w's leading (`einsum_f32` for its gradients).
    w may be a `QuantWeight` (4-bit draft weights): its dequantised value through XLA. x may be
    `NormedRows` (then row_scale must be None): the norm is applied first (module doc)."""
    if isinstance(x, NormedRows):
        if row_scale is not None:
            raise ValueError(
                "NormedRows carry their own row scale (1 / rms): row_scale must be None"
            )
        weighted, scale = x.factors()  # x * weight [B, T, D], 1 / rms [B, T, 1]
        return project(spec, weighted, w, dtype, precision, scale)
    if _kernel_path(spec, x, w, dtype) == "xla":
        return einsum_f32(spec, x, w, dtype, precision, row_scale)
    y = _kernel_product(spec, x, w, dtype)
    return y if row_scale is None else y * _rows(row_scale, y.ndim)


def _kernel_path(spec: str, x: jax.Array, w: jax.Array, dtype) -> str:
    """ "xla" or "pallas" for `project(spec, x, w)` (`implementation`; "xla" unless the spec is a
    matrix product of x's trailing axes with w's leading ones)."""
    if isinstance(w, QuantWeight):  # not the kernel: XLA may fuse the dequantisation
        return "xla"
    inputs, out = spec.split("->")
    x_axes, w_axes = inputs.split(",")
    contracted, kept = x_axes[2:], w_axes[len(x_axes) - 2 :]
    if not (w_axes.startswith(contracted) and out == x_axes[:2] + kept):
        return "xla"
    rows, k = math.prod(x.shape[:2]), math.prod(x.shape[2:])
    return implementation(rows, k, math.prod(w.shape[len(contracted) :]), dtype)


def _kernel_product(spec: str, x: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """The skinny-matmul kernel's x [B, T, *c] @ w [*c, *o] -> [B, T, *o] float32."""
    rows, contracted = math.prod(x.shape[:2]), x.ndim - 2
    k = math.prod(x.shape[2:])
    x, w = x.astype(dtype), w.astype(dtype)
    x2, w2 = x.reshape(rows, k), w.reshape(k, -1)  # [M, K], [K, N]
    y = matvec_triton.skinny_matmul(x2, w2, interpret=jax.default_backend() != "gpu")
    return y.reshape(x.shape[:2] + w.shape[contracted:])  # [B, T, *o]
