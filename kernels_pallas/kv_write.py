"""A block's K and V written into their cache buffers in place, by one Triton `pallas_call`.

XLA writes a decode step's new K/V with one scatter (or dynamic-update-slice) per buffer: two small
kernels per layer, each a few microseconds of launch and latency for a few kilobytes (8B shape,
batch 8: ~5 us a layer for the pair, ~160 us of a 4.4 ms step; experiments/results/perf_h200_run7).
Here one kernel writes both: program i copies token i of the block (a row of K x H values of K and
of V) to its slot, the caches aliased to the outputs so nothing else moves. Measured on the H200
(8B shape, plain decoding; experiments/results/perf_h200_run11): batch 8 0.5-0.9% faster a step
than the two scatters, batch 1 1.1% slower than the two dynamic-update-slices (the `small` step at
batch 1 counted one kernel more per layer with it, 405 against 379 under CUPTI);
`KVCache.write` routes it where XLA would scatter (specdec/cache.py).

Contract (`kv_write_reference`, the scatter the cache used before): k_cache, v_cache [B, S, K, H],
k_new, v_new [B, T, K, H], slots [B, T] int32 -> the caches with row b's token t at slot
slots[b, t] (>= 0); a slot >= S is dropped (never clamped onto a live slot). Slots of one row
are distinct (a block writes each position once). Needs K x H a power of two (one Triton block per
row), else `fits` is False and the caller scatters.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton


def fits(k_cache: jax.Array) -> bool:
    """Whether the kernel tiles these buffers (a token's K x H values as one power-of-two block)."""
    width = k_cache.shape[2] * k_cache.shape[3]
    return width >= 16 and width & (width - 1) == 0


def kv_write_reference(k_cache, v_cache, k_new, v_new, slots):
    """The contract as XLA scatters (mode="drop": slots past the buffer are discarded)."""
    rows = jnp.arange(slots.shape[0])[:, None]  # [B, 1]
    put = lambda buf, new: buf.at[rows, slots].set(new.astype(buf.dtype), mode="drop")
    return put(k_cache, k_new), put(v_cache, v_new)


def _kv_write_kernel(dest_ref, k_new_ref, v_new_ref, _k_in, _v_in, k_out_ref, v_out_ref):
    """Program i: token i's K and V rows [K * H] to row dest_ref[i] of the flattened caches."""
    i = pl.program_id(0)
    dest = dest_ref[i]  # flat row b * S + slot, or -1: dropped
    keep = jnp.full(k_new_ref.shape[1:], dest >= 0)
    row = jnp.maximum(dest, 0)
    pltriton.store(k_out_ref.at[row], k_new_ref[i, :], mask=keep)
    pltriton.store(v_out_ref.at[row], v_new_ref[i, :], mask=keep)


@functools.partial(jax.jit, static_argnames=("interpret",))
def kv_write_triton(k_cache, v_cache, k_new, v_new, slots, *, interpret: bool = False):
    """`kv_write_reference` as one kernel, the caches updated in place (aliased); ValueError where
    `fits` is False."""
    batch, capacity, kv_heads, head_dim = k_cache.shape
    block = k_new.shape[1]
    if not fits(k_cache):
        raise ValueError(
            f"kv_write_triton needs K * H a power of two >= 16: K={kv_heads}, H={head_dim}"
        )
    if v_cache.shape != k_cache.shape or v_new.shape != k_new.shape:
        raise ValueError(f"K/V shapes differ: {k_cache.shape} / {v_cache.shape}, "
                         f"{k_new.shape} / {v_new.shape}")  # fmt: skip
    if k_new.shape != (batch, block, kv_heads, head_dim) or slots.shape != (batch, block):
        raise ValueError(
            f"expected new K/V [B={batch}, T, K={kv_heads}, H={head_dim}] and slots [B, T]: "
            f"{k_new.shape}, {slots.shape}"
        )
    width = kv_heads * head_dim
    inside = (slots >= 0) & (slots < capacity)
    rows = jnp.arange(batch, dtype=jnp.int32)[:, None] * capacity
    dest = jnp.where(inside, rows + slots.astype(jnp.int32), -1).reshape(-1)  # [B * T]
    flat = lambda x: x.reshape(-1, width)  # free reshapes of contiguous buffers
    k_out, v_out = pl.pallas_call(
        _kv_write_kernel,
        grid=(batch * block,),
        in_specs=[pl.BlockSpec()] * 5,  # whole arrays: the kernel indexes rows itself
        out_specs=[pl.BlockSpec(), pl.BlockSpec()],
        out_shape=[jax.ShapeDtypeStruct((batch * capacity, width), k_cache.dtype)] * 2,
        input_output_aliases={3: 0, 4: 1},
        compiler_params=pltriton.CompilerParams(num_warps=1, num_stages=1),
        interpret=interpret,
        name="kv_write",
    )(
        dest,
        flat(k_new).astype(k_cache.dtype),
        flat(v_new).astype(v_cache.dtype),
        flat(k_cache),
        flat(v_cache),
    )
    return k_out.reshape(k_cache.shape), v_out.reshape(v_cache.shape)
