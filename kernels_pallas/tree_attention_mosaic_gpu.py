"""Tree attention as a Mosaic GPU kernel (`plgpu.kernel`) for Hopper (sm90) and newer GPUs.

One CUDA block (CTA) owns 64 * compute_wgs folded query rows of one (batch, KV head) and one key
split; it is warp specialised like FlashAttention 3: a memory warpgroup streams K/V blocks into a
ring of shared-memory stages with the TMA engine, and one or two compute warpgroups (64 rows each)
run QK^T and PV on the tensor cores (wgmma) with an online softmax in registers. With two compute
warpgroups a schedule barrier makes them take turns on the tensor cores (ping-pong) so one's
softmax overlaps the other's matmuls.

Masking follows the Triton kernel: blocks wholly inside the committed prefix take no mask; the
split's last blocks take the prefix mask from lengths[b] (a scalar read from global memory) and the
tree mask from the bit-packed words (one int32 row vector per word, broadcast along the keys).
Values of slots past lengths[b] + R that share the final key block are zeroed in shared memory
before the PV product, so whatever the cache holds there (even NaN) never reaches the output.

Limits: bf16/fp16 only (use the Triton kernel for float32), H a multiple of 64, S a multiple of
block_k. Partial results of a split are written in the input dtype (one extra rounding, merged in
float32).
"""

import dataclasses
import functools

import jax
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels_pallas import tree_common as tc
from kernels_pallas.reference import tree_attention_reference

ROWS_PER_WARPGROUP = 64  # wgmma's M: each compute warpgroup owns 64 folded query rows
SWIZZLE_BYTES = 128  # widest TMA/wgmma swizzle; a 16-bit row of 64 elements
DEFAULT_NUM_SMS = 132  # H100 SXM
# Registers per thread when two compute warpgroups share the CTA with the memory warpgroup:
# (2 * 232 + 40) * 128 threads = 64512 of the SM's 65536 registers (FlashAttention 3's split).
COMPUTE_REGISTERS = 232
MEMORY_REGISTERS = 40


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiling of the Mosaic GPU tree-attention kernel."""

    compute_wgs: int
    """Compute warpgroups per CTA (1 or 2); the CTA owns 64 * compute_wgs folded query rows."""
    block_k: int
    """Cache slots per key block (a multiple of 64 that divides S; at most 256)."""
    num_stages: int
    """Shared-memory K/V stages the memory warpgroup keeps in flight (>= 2)."""
    num_splits: int
    """Key splits per (batch, KV head, row tile); > 1 merges partial results by log-sum-exp."""

    def __post_init__(self):
        if self.compute_wgs not in (1, 2):
            raise ValueError(f"{self.compute_wgs=} must be 1 or 2")
        if self.block_k % 64 or not 64 <= self.block_k <= 256:
            raise ValueError(f"{self.block_k=} must be a multiple of 64 in [64, 256]")
        if self.num_stages < 2:
            raise ValueError(f"{self.num_stages=} must be >= 2")
        if self.num_splits < 1:
            raise ValueError(f"{self.num_splits=} must be >= 1")


def default_block_sizes(shape: tc.TreeShape, *, num_sms: int = DEFAULT_NUM_SMS) -> BlockSizes:
    """One compute warpgroup when the folded rows fit in 64, else two; splits to fill the SMs."""
    compute_wgs = 1 if shape.rows <= ROWS_PER_WARPGROUP else 2
    block_k = 128 if shape.num_slots % 128 == 0 else 64
    # 3 stages ran no faster on the H100 with one warpgroup, and do not fit SMEM with two.
    num_stages = 2
    row_tiles = pl.cdiv(shape.rows, ROWS_PER_WARPGROUP * compute_wgs)
    programs = shape.batch * shape.num_kv_heads * row_tiles
    splits = tc.choose_num_splits(programs, shape.num_slots, block_k, num_cores=num_sms)
    return BlockSizes(compute_wgs, block_k, num_stages, splits)


def _smem_transforms(dtype):
    elems = SWIZZLE_BYTES // jnp.dtype(dtype).itemsize
    return (plgpu.TilingTransform((8, elems)), plgpu.SwizzleTransform(SWIZZLE_BYTES))


def _build_kernel(shape: tc.TreeShape, bs: BlockSizes, dtype, scale_log2: float):
    """Returns the kernel body for plgpu.kernel (closes over the static sizes)."""
    wgs, block_k, stages, splits = bs.compute_wgs, bs.block_k, bs.num_stages, bs.num_splits
    rows, head_dim, width, num_words = (
        ROWS_PER_WARPGROUP,
        shape.head_dim,
        shape.width,
        shape.mask_words,
    )
    wgmma_layout = plgpu.Layout.WGMMA
    row_layout = plgpu.Layout.WGMMA.reduce(1)

    def body(
        # inputs (GMEM)
        lengths_ref,  # [B] int32
        q_ref,  # [B, K, M_gmem, H] folded queries (M_gmem: M rounded up to the 8-row tiling)
        k_ref,  # [B, S, K, H]
        v_ref,  # [B, S, K, H]
        words_ref,  # [B, W, M_pad] int32 bit-packed tree mask
        # outputs (GMEM)
        o_ref,  # [B, K, M_gmem, H] or, split, [B, K, P, M_gmem, H] (q dtype)
        lse_ref,  # None or, split, [B, K, P, M_pad] float32 log2-sum-exp
        # scratch (SMEM)
        qo_smem,  # [wgs, 64, H]: queries, then the output tile
        k_smem,  # [stages, block_k, H]
        v_smem,  # [stages, block_k, H]
        lse_smem,  # None or [wgs, 64] float32
        k_ready,
        v_ready,
        q_ready,  # barriers: TMA arrivals ([stages], [stages], [wgs])
        k_free,
        v_free,  # barriers: each compute warpgroup is done with a stage ([stages] each)
        schedule,  # barrier: ping-pong of the two compute warpgroups (None with one)
    ):
        batch = lax.axis_index("batch")
        kv_head = lax.axis_index("kv_head")
        split = lax.axis_index("split")
        tile = lax.axis_index("row_tile")
        wg = lax.axis_index("wg")

        length = lengths_ref[batch]
        end = length + width  # first slot never visible
        num_blocks = (end + block_k - 1) // block_k
        start, stop = tc.split_range(num_blocks, split, splits)
        steps = jnp.maximum(stop - start, 0)
        # Steps [0, unmasked) lie wholly inside the prefix; [unmasked, steps) take the mask.
        unmasked = jnp.clip(length // block_k - start, 0, steps)

        def schedule_turn():
            if schedule is not None:
                plgpu.barrier_arrive(schedule)
                plgpu.barrier_wait(schedule)

        def _zero_tail_values(v_stage, first, end):
            """Zeroes rows of a V stage at slots >= end (only the final key block has any)."""

            @pl.when(first + block_k > end)
            def _():
                for chunk in range(block_k // rows):
                    part = v_stage.at[pl.ds(chunk * rows, rows)]  # [64, H]
                    slot_ids = plgpu.broadcasted_iota(
                        jnp.int32, (rows, head_dim), 0, layout=wgmma_layout
                    )
                    keep = slot_ids + (first + chunk * rows) < end
                    values = part[...]
                    part[...] = jnp.where(keep, values, jnp.zeros_like(values))
                plgpu.commit_smem()  # make the stores visible to the tensor cores

        @pl.when(wg < wgs)
        def _compute():
            if wgs == 2:
                plgpu.set_max_registers(COMPUTE_REGISTERS, action="increase")
            row0 = tile * (wgs * rows) + wg * rows
            q_tile = qo_smem.at[wg]
            plgpu.copy_gmem_to_smem(
                q_ref.at[batch, kv_head, pl.ds(row0, rows)], q_tile, q_ready.at[wg]
            )
            words = [
                plgpu.load(
                    words_ref.at[batch, w, pl.ds(row0, rows)], layout=row_layout, optimized=False
                )
                for w in range(num_words)
            ]  # W x [64] int32
            plgpu.barrier_wait(q_ready.at[wg])

            m_i = plgpu.layout_cast(jnp.full((rows,), tc.EMPTY_LSE, jnp.float32), row_layout)
            l_i = plgpu.layout_cast(jnp.full((rows,), 0.0, jnp.float32), row_layout)
            acc = plgpu.layout_cast(jnp.full((rows, head_dim), 0.0, jnp.float32), wgmma_layout)

            @pl.when(steps > 0)
            def _():
                plgpu.barrier_wait(k_ready.at[0])

            if wgs == 2:
                pl.when(wg == 1)(schedule_turn)

            def kv_step(i, carry, *, masked: bool):
                acc, m_i, l_i = carry
                slot = lax.rem(i, stages)
                first = (start + i) * block_k  # first cache slot of this key block

                def qk(acc_ref):
                    plgpu.wgmma(acc_ref, q_tile, k_smem.at[slot].transpose((1, 0)))
                    schedule_turn()
                    return acc_ref[...]

                s = pl.run_scoped(qk, plgpu.ACC((rows, block_k), jnp.float32))  # [64, block_k]
                plgpu.barrier_arrive(k_free.at[slot])
                if masked:
                    col = plgpu.broadcasted_iota(jnp.int32, (rows, block_k), 1, layout=wgmma_layout)
                    rel = col + (first - length)  # slot - lengths[b]
                    row_words = [lax.broadcast_in_dim(w, (rows, block_k), [0]) for w in words]
                    visible = (rel < 0) | tc.region_bits(row_words, rel, width)
                    s = jnp.where(visible, s, -jnp.inf)
                # Scores stay unscaled: the scale (> 0) goes into the row max and into one
                # multiply-add per score inside exp2, as in FlashAttention 3.
                m_new = jnp.maximum(m_i, s.max(axis=1) * scale_log2)
                alpha = jnp.exp2(m_i - m_new)
                p = jnp.exp2(
                    s * scale_log2 - lax.broadcast_in_dim(m_new, s.shape, [0])
                )  # masked -> 0
                acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
                l_i = l_i * alpha + p.sum(axis=1)
                p16 = p.astype(dtype)
                if schedule is not None:
                    plgpu.barrier_arrive(schedule)
                plgpu.barrier_wait(v_ready.at[slot])
                if schedule is not None:
                    plgpu.barrier_wait(schedule)
                if masked:
                    _zero_tail_values(v_smem.at[slot], first, end)

                def pv(acc_ref):
                    plgpu.wgmma(acc_ref, p16, v_smem.at[slot])

                    @pl.when(i + 1 < steps)
                    def _():
                        plgpu.barrier_wait(k_ready.at[lax.rem(i + 1, stages)])

                acc = pl.run_state(pv)(plgpu.ACC.init(acc))
                plgpu.barrier_arrive(v_free.at[slot])
                return acc, m_new, l_i

            carry = (acc, m_i, l_i)
            carry = lax.fori_loop(0, unmasked, functools.partial(kv_step, masked=False), carry)
            carry = lax.fori_loop(unmasked, steps, functools.partial(kv_step, masked=True), carry)
            acc, m_i, l_i = carry
            if wgs == 2:
                pl.when(wg == 0)(schedule_turn)

            empty = l_i == 0.0  # the row saw no key in this split
            l_safe = jnp.where(empty, 1.0, l_i)
            acc = acc / lax.broadcast_in_dim(l_safe, acc.shape, [0])
            q_tile[...] = acc.astype(dtype)
            if lse_smem is not None:
                lse_smem.at[wg][...] = jnp.where(empty, tc.EMPTY_LSE, m_i + jnp.log2(l_safe))
            plgpu.commit_smem()
            if splits == 1:
                plgpu.copy_smem_to_gmem(q_tile, o_ref.at[batch, kv_head, pl.ds(row0, rows)])
            else:
                plgpu.copy_smem_to_gmem(q_tile, o_ref.at[batch, kv_head, split, pl.ds(row0, rows)])
                plgpu.copy_smem_to_gmem(
                    lse_smem.at[wg], lse_ref.at[batch, kv_head, split, pl.ds(row0, rows)]
                )
            plgpu.wait_smem_to_gmem(0)

        @pl.when(wg == wgs)
        def _memory():
            if wgs == 2:
                plgpu.set_max_registers(MEMORY_REGISTERS, action="decrease")

            def fetch(i, slot):
                src = (batch, pl.ds((start + i) * block_k, block_k), kv_head)
                plgpu.copy_gmem_to_smem(k_ref.at[src], k_smem.at[slot], k_ready.at[slot])
                plgpu.copy_gmem_to_smem(v_ref.at[src], v_smem.at[slot], v_ready.at[slot])

            for i in range(stages):
                pl.when(i < steps)(functools.partial(fetch, i, i))

            def refill(i, _):
                slot = lax.rem(i, stages)
                plgpu.barrier_wait(k_free.at[slot])
                plgpu.barrier_wait(v_free.at[slot])
                fetch(i + stages, slot)

            lax.fori_loop(0, steps - stages, refill, None)

    return body


@functools.partial(jax.jit, static_argnames=("scale", "block_sizes", "interpret"))
def tree_attention_mosaic_gpu(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    lengths: jax.Array,  # [B] int32
    region_mask: jax.Array,  # [B, T, R] bool
    *,
    scale: float | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
) -> jax.Array:  # [B, T, N, H] in q.dtype
    """Tree attention (contract of kernels_pallas.reference) with the Mosaic GPU kernel."""
    shape = tc.check_inputs(q, k, v, lengths, region_mask)
    if interpret:
        # jax <= 0.12's Mosaic GPU interpreter (plgpu.InterpretGPUParams) cannot run wgmma; the CPU
        # tests check that this kernel lowers (jax.export for "cuda") instead.
        raise NotImplementedError("the mosaic_gpu tree-attention kernel has no interpret mode")
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"mosaic_gpu tree attention takes bf16/fp16, got {q.dtype=} (use triton)")
    if shape.head_dim % 64:
        raise ValueError(f"mosaic_gpu tree attention needs H % 64 == 0, got H={shape.head_dim}")
    bs = block_sizes or default_block_sizes(shape, num_sms=_num_sms())
    if shape.num_slots % bs.block_k:
        raise ValueError(f"cache slots S={shape.num_slots} must be a multiple of {bs.block_k=}")
    scale = shape.head_dim**-0.5 if scale is None else scale
    if scale <= 0:
        raise ValueError(f"{scale=} must be positive")
    wgs, stages, splits = bs.compute_wgs, bs.num_stages, bs.num_splits
    block_rows = ROWS_PER_WARPGROUP * wgs
    row_tiles = pl.cdiv(shape.rows, block_rows)
    rows_padded = row_tiles * block_rows
    # Queries and outputs are not padded to the 64-row tiles: TMA zero-fills reads and drops writes
    # past the array. The array's row count only needs to be < 8 or a multiple of the 8-row tiling.
    rows_gmem = shape.rows if shape.rows < 8 else tc.round_up(shape.rows, 8)
    kv_heads = shape.num_kv_heads

    q_folded = tc.fold_queries(q, shape, rows_gmem)  # [B, K, M_gmem, H]
    words = tc.pack_region_mask(region_mask, shape, rows_padded)  # [B, W, M_pad]
    if splits == 1:
        out_type = [
            jax.ShapeDtypeStruct((shape.batch, kv_heads, rows_gmem, shape.head_dim), q.dtype)
        ]
    else:
        parts = (shape.batch, kv_heads, splits, rows_padded)
        out_type = [
            jax.ShapeDtypeStruct((*parts[:3], rows_gmem, shape.head_dim), q.dtype),
            jax.ShapeDtypeStruct(parts, jnp.float32),
        ]
    body = _build_kernel(shape, bs, q.dtype, scale * tc.LOG2E)
    transforms = _smem_transforms(q.dtype)

    def entry(lengths_ref, q_ref, k_ref, v_ref, words_ref, o_ref, *maybe_lse_ref):
        lse_ref = maybe_lse_ref[0] if maybe_lse_ref else None

        def scoped(smem, ready, free, schedule):
            body(
                lengths_ref,
                q_ref,
                k_ref,
                v_ref,
                words_ref,
                o_ref,
                lse_ref,
                *smem,
                *ready,
                *free,
                schedule,
            )

        tile = (ROWS_PER_WARPGROUP, shape.head_dim)
        kv_tile = (stages, bs.block_k, shape.head_dim)
        pl.run_scoped(
            scoped,
            (
                plgpu.SMEM((wgs, *tile), q.dtype, transforms=transforms),
                plgpu.SMEM(kv_tile, q.dtype, transforms=transforms),
                plgpu.SMEM(kv_tile, q.dtype, transforms=transforms),
                plgpu.SMEM((wgs, ROWS_PER_WARPGROUP), jnp.float32) if splits > 1 else None,
            ),
            (
                plgpu.Barrier(num_barriers=stages),
                plgpu.Barrier(num_barriers=stages),
                plgpu.Barrier(num_barriers=wgs),
            ),
            (plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),) * 2,
            plgpu.Barrier(num_arrivals=wgs) if wgs == 2 else None,
            collective_axes="wg",
        )

    outs = plgpu.kernel(
        entry,
        out_type=out_type,
        grid=(shape.batch, kv_heads, splits, row_tiles),  # row tiles fastest: they share K/V in L2
        grid_names=("batch", "kv_head", "split", "row_tile"),
        num_threads=wgs + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
    )(lengths.astype(jnp.int32), q_folded, k, v, words)
    out = outs[0] if splits == 1 else tc.merge_splits(*outs)
    return tc.unfold_output(out, shape, q.dtype)


def _num_sms() -> int:
    try:
        return int(getattr(jax.devices()[0], "core_count", 0)) or DEFAULT_NUM_SMS
    except RuntimeError:
        return DEFAULT_NUM_SMS


# The pure-jnp reference of this kernel is the package contract itself.
tree_attention_mosaic_gpu_reference = tree_attention_reference
