"""Skinny matrix products x [M, K] @ w [K, N] (M <= 16: decode-time projections) as a Triton
`pallas_call`: a memory-bound kernel that streams the weights once.

On an H200, XLA compiles these as Triton GEMMs that read the weights well below the HBM ceiling or,
for small models, as an elementwise product written to an f32 [K, N] buffer plus a reduction
kernel. Here one program owns block_n output columns and a contiguous 1/splits slice of K; it walks
that slice in block_k chunks (a `fori_loop`, software-pipelined by Triton over num_stages),
accumulating f32 [M_pad, block_n] either on tensor cores (`use_dot`, rows padded to 16) or as a
broadcast product summed over the chunk. Each split writes its partial to [splits, M, N] float32,
and the wrapper sums the splits (one small XLA reduction, fusable into the consumer).

Rows are padded in HBM to M_pad (a power of two; at least 16 for a dot): x with zero rows (XLA
fuses the pad into x's producer), the partials with rows that are sliced off. Blocks that span
past an array's rows are meant to be masked by the Triton lowering, but on the H200 (jax 0.11.2) a
16-row dot block over a 1-row product corrupted neighbouring buffers of the decode loop while its
own output was right (experiments/results/perf_h200_run7), so no block here leaves its array.

The Triton backend of Pallas is deprecated on GPU since jax 0.11 (Mosaic GPU replaces it on
Hopper), but it still runs on every CUDA GPU and, with interpret=True, on CPU.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

# Rows this kernel is meant for (batch x tokens of a decode step); `supports` is False above it,
# where XLA's GEMMs are no longer weight-bandwidth bound.
MAX_ROWS = 16
# Column and K-chunk tiles tried by `default_blocks`, preferred first (powers of two for Triton).
BLOCK_N_CHOICES = (128, 64, 32, 16)
BLOCK_K_CHOICES = (128, 64, 32, 16)
# Rows of a tensor-core dot: Triton's tt.dot wants every dimension >= 16.
DOT_MIN_ROWS = 16
# Largest [M_pad, block_k, block_n] f32 product of the broadcast path that `default_blocks` picks:
# 16k elements are 128 registers a thread at 4 warps (more spills).
MAX_PRODUCT_ELEMENTS = 16384
# Programs per SM `default_blocks` aims for (enough loads in flight to saturate HBM).
TARGET_PROGRAMS_PER_CORE = 2
# Streaming multiprocessors assumed when the device does not say (an H100/H200 has 132).
DEFAULT_NUM_CORES = 132


@dataclasses.dataclass(frozen=True)
class MatvecBlocks:
    """Tiling of the Triton skinny-matmul kernel."""

    block_n: int
    """Output columns per program (a power of two dividing N)."""
    block_k: int
    """K rows of w per loop step (a power of two; splits * block_k divides K)."""
    splits: int = 1
    """Contiguous K slices, one program each per column tile; > 1 sums partials in XLA."""
    num_warps: int = 4
    """Warps per program."""
    num_stages: int = 4
    """Software-pipelining depth of the K loop (loads in flight)."""
    use_dot: bool = True
    """Accumulate with a tensor-core dot (a row block of >= 16) instead of a broadcast product
    summed over block_k (a row block of M rounded up to a power of two; meant for M <= 8)."""
    defer_reduce: bool = False
    """Broadcast path only: accumulate the [M_pad, block_k, block_n] products and sum over block_k
    once after the loop instead of every step (fewer cross-thread reductions, more registers)."""


# Tuned tilings, (M, K, N) -> blocks, consulted before the heuristic: the shapes where the sweep of
# experiments/bench_matvec.py (H200, 2026-11-30, experiments/results/perf_h200_run7) found a tiling
# faster than both XLA's dot and the heuristic's (Llama-3-8B o and gate/up at one row: 11.6 /
# 55.8 us against XLA's 12.5 / 59.4). Swept before rows were padded in the wrapper: the gate/up
# dot tiling now also pays a pad kernel of ~1.5 us before the call (still ahead).
TUNED_BLOCKS: dict[tuple[int, int, int], MatvecBlocks] = {
    # Re-swept in run 9 (rows padded in the wrapper; perf_h200_run9 call 6): the broadcast tiling
    # with 8 K splits, 16.1 us against the 16-row dot's 16.8 (which pays a pad kernel); 8B
    # batch-1 step 4.496 / 4.483 -> 4.458 / 4.421 ms.
    (1, 4096, 6144): MatvecBlocks(128, 64, 8, num_warps=4, num_stages=3, use_dot=False),
    (1, 4096, 4096): MatvecBlocks(128, 64, 16, num_warps=4, num_stages=4, use_dot=False),
    (1, 4096, 28672): MatvecBlocks(64, 64, 1, num_warps=4, num_stages=3, use_dot=True),
    # `small`'s LM head at one row: 7.8 us against XLA's 11.7 and the heuristic's 12.3.
    (1, 768, 16384): MatvecBlocks(64, 64, 1, num_warps=4, num_stages=4, use_dot=True),
}
# Where the kernel pays without a tuned tiling: one or two rows times a weight of at most this many
# elements. There XLA rewrites the product as an elementwise multiply writing an f32 [K, N] buffer
# plus a reduction (the `small` model's projections at one row: XLA 6.0 / 4.2 / 6.0 / 8.6 us,
# the heuristic tiling 3.6 / 2.8 / 4.4 / 3.5 us). At 8 rows XLA's GEMMs were as fast or faster at
# every shape measured, and the heuristic's tilings of large weights were slower than XLA's.
HEURISTIC_MAX_ROWS = 2
HEURISTIC_MAX_WEIGHTS = 1 << 24  # exclusive: the `small` LM head (768 x 16384) is in


def padded_rows(m: int, use_dot: bool) -> int:
    """Rows of the x and output blocks: M rounded up to a power of two (at least 16 for a dot)."""
    rows = pl.next_power_of_2(m)
    return max(rows, DOT_MIN_ROWS) if use_dot else rows


def check_blocks(m: int, k: int, n: int, bs: MatvecBlocks) -> None:
    """Raise ValueError naming the problem if `bs` cannot tile x [m, k] @ w [k, n]."""
    for name, value in (("block_n", bs.block_n), ("block_k", bs.block_k)):
        if value < 1 or value & (value - 1):
            raise ValueError(f"{name}={value} must be a power of two (Triton block shapes)")
    if bs.splits < 1:
        raise ValueError(f"{bs.splits=} must be >= 1")
    if n % bs.block_n:
        raise ValueError(f"N={n} must be a multiple of {bs.block_n=}")
    if k % (bs.splits * bs.block_k):
        raise ValueError(f"K={k} must be a multiple of splits * block_k = {bs.splits * bs.block_k}")
    if bs.use_dot and bs.defer_reduce:
        raise ValueError("defer_reduce applies to the broadcast path only (use_dot=False)")
    if m < 1:
        raise ValueError(f"M={m} must be >= 1")


def _choose_splits(chunks: int, tiles: int, max_splits: int, target: int) -> int:
    """The smallest divisor of `chunks` (<= max_splits) giving tiles * splits >= target programs,
    else the largest such divisor."""
    divisors = [d for d in range(1, min(chunks, max(max_splits, 1)) + 1) if chunks % d == 0]
    return next((d for d in divisors if tiles * d >= target), divisors[-1])


def _heuristic_blocks(m: int, k: int, n: int, num_cores: int) -> MatvecBlocks | None:
    if not 1 <= m <= MAX_ROWS:
        return None
    # A guess until the GPU sweep fills TUNED_BLOCKS: tensor cores once rows are worth padding.
    use_dot = m > 2
    rows = padded_rows(m, use_dot)
    target = TARGET_PROGRAMS_PER_CORE * num_cores
    # Partials are written and read back: keep them under 1/8 of the weight bytes.
    max_splits = max(1, k // (16 * m))
    best = None  # (programs, blocks) of the most parallel tiling when none reaches the target
    # Tiles of >= 64 columns (full 128-byte rows of bf16) first, the largest first.
    pairs = sorted(
        ((bn, bk) for bn in BLOCK_N_CHOICES for bk in BLOCK_K_CHOICES),
        key=lambda p: (p[0] < 64, -p[0] * p[1], -p[0]),
    )
    for block_n, block_k in pairs:
        if k % block_k or n % block_n:
            continue
        if not use_dot and rows * block_k * block_n > MAX_PRODUCT_ELEMENTS:
            continue
        tiles = n // block_n
        splits = _choose_splits(k // block_k, tiles, max_splits, target)
        blocks = MatvecBlocks(block_n, block_k, splits, use_dot=use_dot)
        if tiles * splits >= target:
            return blocks
        if best is None or tiles * splits > best[0]:
            best = (tiles * splits, blocks)
    return None if best is None else best[1]


def default_blocks(m: int, k: int, n: int, *, num_cores: int = DEFAULT_NUM_CORES) -> MatvecBlocks:
    """The tuned tiling of (m, k, n) if any, else: the largest tiles whose grid, with K split into
    `splits` slices, gives >= 2 programs per SM (else the most programs any tiling gives)."""
    blocks = TUNED_BLOCKS.get((m, k, n)) or _heuristic_blocks(m, k, n, num_cores)
    if blocks is None:
        raise ValueError(
            f"no tiling of x [{m}, {k}] @ w [{k}, {n}]: needs 1 <= M <= {MAX_ROWS} and K, N "
            f"multiples of {BLOCK_K_CHOICES[-1]} and {BLOCK_N_CHOICES[-1]}"
        )
    return blocks


def pays(m: int, k: int, n: int) -> bool:
    """Whether the kernel is expected to beat XLA's dot here: a tuned shape, or few rows times a
    small weight that the heuristic tiles (see HEURISTIC_MAX_ROWS)."""
    if (m, k, n) in TUNED_BLOCKS:
        return True
    small = m <= HEURISTIC_MAX_ROWS and k * n < HEURISTIC_MAX_WEIGHTS
    return small and _heuristic_blocks(m, k, n, DEFAULT_NUM_CORES) is not None


def supports(m: int, k: int, n: int) -> bool:
    """Whether `default_blocks` tiles this shape (else callers use XLA's dot)."""
    return TUNED_BLOCKS.get((m, k, n)) is not None or (
        _heuristic_blocks(m, k, n, DEFAULT_NUM_CORES) is not None
    )


def _skinny_matmul_kernel(
    # inputs
    x_ref,  # [M_pad, K / splits]: x over this split's K slice (rows past M masked)
    w_ref,  # [K / splits, block_n]: this split's slice of the program's columns
    # outputs
    o_ref,  # [M_pad, block_n] float32: the split's partial product
    *,
    block_k: int,
    use_dot: bool,
    defer_reduce: bool,
    precision,
):
    rows, block_n = o_ref.shape
    steps = w_ref.shape[0] // block_k

    def tiles(i):
        first = pl.multiple_of(i * block_k, block_k)
        x = x_ref[:, pl.ds(first, block_k)]  # [M_pad, block_k]
        # The weights are read exactly once: let them leave L2 first, so x and partials stay.
        w = pltriton.load(w_ref.at[pl.ds(first, block_k), :], eviction_policy="evict_first")
        return x, w  # w: [block_k, block_n]

    def product(x, w):  # [M_pad, block_k, block_n] float32
        return x.astype(jnp.float32)[:, :, None] * w.astype(jnp.float32)[None, :, :]

    if use_dot:

        def step(i, acc):  # acc: [M_pad, block_n] float32
            x, w = tiles(i)
            return acc + lax.dot(x, w, precision=precision, preferred_element_type=jnp.float32)

        out = lax.fori_loop(0, steps, step, jnp.zeros((rows, block_n), jnp.float32))
    elif defer_reduce:
        step = lambda i, acc: acc + product(*tiles(i))  # acc: [M_pad, block_k, block_n]
        acc = lax.fori_loop(0, steps, step, jnp.zeros((rows, block_k, block_n), jnp.float32))
        out = acc.sum(axis=1)
    else:
        step = lambda i, acc: acc + product(*tiles(i)).sum(axis=1)  # acc: [M_pad, block_n]
        out = lax.fori_loop(0, steps, step, jnp.zeros((rows, block_n), jnp.float32))
    o_ref[...] = out


@functools.partial(jax.jit, static_argnames=("block_sizes", "interpret"))
def skinny_matmul(
    x: jax.Array,  # [M, K]
    w: jax.Array,  # [K, N]
    *,
    block_sizes: MatvecBlocks | None = None,
    interpret: bool = False,
) -> jax.Array:  # [M, N] float32
    """x @ w with float32 accumulation (contract of `skinny_matmul_reference`), streaming w once."""
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"need x [M, K] and w [K, N]: x.shape={x.shape}, w.shape={w.shape}")
    if x.dtype != w.dtype:
        raise ValueError(f"x and w must share a dtype: x.dtype={x.dtype}, w.dtype={w.dtype}")
    (m, k), n = x.shape, w.shape[1]
    bs = block_sizes or default_blocks(m, k, n, num_cores=num_cores())
    check_blocks(m, k, n, bs)
    rows = padded_rows(m, bs.use_dot)
    x = jnp.pad(x, ((0, rows - m), (0, 0)))  # [M_pad, K]: no block leaves its array (module doc)
    k_split = k // bs.splits
    kernel = functools.partial(
        _skinny_matmul_kernel,
        block_k=bs.block_k,
        use_dot=bs.use_dot,
        defer_reduce=bs.defer_reduce,
        precision=lax.Precision.HIGHEST if x.dtype == jnp.float32 else None,
    )
    partials = pl.pallas_call(
        kernel,
        grid=(n // bs.block_n, bs.splits),
        in_specs=[
            pl.BlockSpec((rows, k_split), lambda j, s: (0, s)),
            pl.BlockSpec((k_split, bs.block_n), lambda j, s: (s, j)),
        ],
        out_specs=pl.BlockSpec((None, rows, bs.block_n), lambda j, s: (s, 0, j)),
        out_shape=jax.ShapeDtypeStruct((bs.splits, rows, n), jnp.float32),
        compiler_params=pltriton.CompilerParams(num_warps=bs.num_warps, num_stages=bs.num_stages),
        interpret=interpret,
        name="skinny_matmul_triton",
    )(x, w)  # [splits, M_pad, N]
    partials = partials[:, :m]  # [splits, M, N]
    return partials[0] if bs.splits == 1 else partials.sum(axis=0)


def num_cores() -> int:
    """Streaming multiprocessors of the default device (DEFAULT_NUM_CORES if it does not say)."""
    try:
        return int(getattr(jax.devices()[0], "core_count", 0)) or DEFAULT_NUM_CORES
    except RuntimeError:
        return DEFAULT_NUM_CORES


def skinny_matmul_reference(
    x: jax.Array,  # [M, K]
    w: jax.Array,  # [K, N]
) -> jax.Array:  # [M, N] float32
    """XLA's x @ w with float32 accumulation (full float32 precision for float32 inputs)."""
    precision = lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
    return jnp.dot(x, w, precision=precision, preferred_element_type=jnp.float32)
