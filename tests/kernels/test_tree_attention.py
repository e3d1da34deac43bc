"""Tree-attention kernels against the jnp reference, on CPU.

The Triton and Mosaic TPU kernels run in Pallas interpret mode on random trees (random parents ->
ancestor masks), ragged lengths (0 and S - R included) and caches whose slots past lengths + R hold
NaN. The Mosaic GPU kernel cannot run here (jax's Mosaic GPU interpreter does not simulate wgmma),
so it is checked to lower for CUDA; the Mosaic TPU kernel is also checked to lower for TPU. Shapes
are tiny: interpret mode runs the grid as a loop of XLA ops.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels_pallas
from kernels_pallas import tree_attention_mosaic_gpu as mosaic_gpu
from kernels_pallas import tree_attention_tpu as tpu
from kernels_pallas import tree_attention_triton as triton
from kernels_pallas import tree_common as tc
from kernels_pallas.reference import tree_attention_reference
from kernels_pallas.testing import random_tree_mask

TOLERANCE = {jnp.float32: 2e-5, jnp.bfloat16: 2e-2}  # max abs error on O(1) outputs


def make_problem(seed, *, batch, block, heads, kv_heads, head_dim, slots, width=None, dtype):
    """Random q/k/v, ragged lengths (0 and S - R first) and random trees; cache tails are NaN."""
    width = width or block
    rng = np.random.default_rng(seed)
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (batch, block, heads, head_dim), jnp.float32).astype(dtype)
    k = jax.random.normal(keys[1], (batch, slots, kv_heads, head_dim), jnp.float32).astype(dtype)
    v = jax.random.normal(keys[2], (batch, slots, kv_heads, head_dim), jnp.float32).astype(dtype)
    lengths = np.concatenate([[0, slots - width], rng.integers(1, slots - width, size=batch)])[
        :batch
    ]
    lengths = jnp.asarray(lengths, jnp.int32)
    region = jnp.asarray(random_tree_mask(rng, batch, block, width))
    ref = tree_attention_reference(q, k, v, lengths, region)
    # Slots at or past lengths + R are never visible: poison them to prove the kernels skip them.
    tail = (jnp.arange(slots)[None, :] >= (lengths + width)[:, None])[:, :, None, None]
    k_poisoned = jnp.where(tail, jnp.nan, k).astype(dtype)
    v_poisoned = jnp.where(tail, jnp.nan, v).astype(dtype)
    return (q, k_poisoned, v_poisoned, lengths, region), ref


def assert_close(out, ref, dtype):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


# (batch, block T, heads N, kv heads K, head dim H, slots S, width R, dtype, block sizes)
TRITON_CASES = {
    "decode_T1_G4_H64_f32": (3, 1, 8, 2, 64, 128, 1, jnp.float32, triton.BlockSizes(16, 32, 3)),
    "T16_G1_H128_bf16": (2, 16, 4, 4, 128, 256, 16, jnp.bfloat16, triton.BlockSizes(64, 64, 2)),
    "T16_G4_H64_R40_f32": (3, 16, 8, 2, 64, 192, 40, jnp.float32, triton.BlockSizes(64, 32, 2)),
    "T64_G8_H64_f32": (2, 64, 8, 1, 64, 256, 64, jnp.float32, triton.BlockSizes(64, 64, 1)),
    "T5_G4_H128_bf16_default_blocks": (2, 5, 8, 2, 128, 256, 5, jnp.bfloat16, None),
}


@pytest.mark.parametrize("case", TRITON_CASES, ids=list(TRITON_CASES))
def test_triton_matches_reference(case):
    b, t, n, kh, h, s, r, dtype, bs = TRITON_CASES[case]
    args, ref = make_problem(
        len(case), batch=b, block=t, heads=n, kv_heads=kh, head_dim=h, slots=s, width=r, dtype=dtype
    )
    out = triton.tree_attention_triton(*args, block_sizes=bs, interpret=True)
    assert_close(out, ref, dtype)


TPU_CASES = {
    "decode_T1_G4_H128_f32": (2, 1, 8, 2, 128, 256, 1, jnp.float32, tpu.BlockSizes(16, 128)),
    "T16_G4_H128_R24_bf16": (2, 16, 8, 2, 128, 256, 24, jnp.bfloat16, None),
    "T64_G1_H64_f32": (2, 64, 2, 2, 64, 256, 64, jnp.float32, tpu.BlockSizes(32, 128)),
}


@pytest.mark.parametrize("case", TPU_CASES, ids=list(TPU_CASES))
def test_tpu_matches_reference(case):
    b, t, n, kh, h, s, r, dtype, bs = TPU_CASES[case]
    args, ref = make_problem(
        len(case), batch=b, block=t, heads=n, kv_heads=kh, head_dim=h, slots=s, width=r, dtype=dtype
    )
    out = tpu.tree_attention_tpu(*args, block_sizes=bs, interpret=True)
    assert_close(out, ref, dtype)


def test_rows_that_see_nothing_are_zero_not_nan():
    q = jax.random.normal(jax.random.key(0), (2, 4, 4, 64))
    k = jax.random.normal(jax.random.key(1), (2, 64, 2, 64))
    lengths = jnp.array([0, 10], jnp.int32)
    region = jnp.zeros((2, 4, 4), bool).at[1].set(True)  # sequence 0 sees no key at all
    out = triton.tree_attention_triton(
        q, k, k, lengths, region, interpret=True, block_sizes=triton.BlockSizes(16, 16, 2)
    )
    np.testing.assert_array_equal(np.asarray(out[0]), 0.0)
    np.testing.assert_allclose(
        out[1], tree_attention_reference(q, k, k, lengths, region)[1], atol=2e-5
    )


def _shape_structs(batch, block, heads, kv_heads, head_dim, slots, width, dtype=jnp.bfloat16):
    sds = jax.ShapeDtypeStruct
    return (
        sds((batch, block, heads, head_dim), dtype),
        sds((batch, slots, kv_heads, head_dim), dtype),
        sds((batch, slots, kv_heads, head_dim), dtype),
        sds((batch,), jnp.int32),
        sds((batch, block, width), jnp.bool_),
    )


@pytest.mark.parametrize(
    "dims,block_sizes",
    [
        ((2, 1, 32, 8, 128, 1024, 1), mosaic_gpu.BlockSizes(1, 128, 2, 8)),  # decoding, split-K
        ((2, 64, 32, 8, 128, 1024, 64), mosaic_gpu.BlockSizes(2, 128, 2, 1)),  # two warpgroups
        ((1, 5, 16, 4, 64, 512, 7), None),  # odd rows, H = 64, default blocks
    ],
    ids=["decode_split", "T64_two_wgs", "odd_rows_H64"],
)
def test_mosaic_gpu_lowers_for_cuda(dims, block_sizes):
    fn = jax.jit(lambda *a: mosaic_gpu.tree_attention_mosaic_gpu(*a, block_sizes=block_sizes))
    exported = jax.export.export(fn, platforms=["cuda"])(*_shape_structs(*dims))
    assert "mosaic_gpu" in exported.mlir_module()


@pytest.mark.parametrize(
    "dims",
    [(2, 1, 32, 8, 128, 1024, 1), (2, 16, 32, 8, 64, 1024, 16)],
    ids=["decode_H128", "T16_H64"],
)
def test_tpu_kernel_lowers_for_tpu(dims):
    device = jax.sharding.AbstractDevice(device_kind="TPU v5 lite", num_cores=1, platform="tpu")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    with jax.sharding.use_abstract_mesh(mesh):
        exported = jax.export.export(jax.jit(tpu.tree_attention_tpu), platforms=["tpu"])(
            *_shape_structs(*dims)
        )
    assert "tpu_custom_call" in exported.mlir_module()


def test_mosaic_gpu_refuses_interpret_and_float32():
    args = (
        jnp.zeros((1, 1, 4, 64)),
        jnp.zeros((1, 64, 1, 64)),
        jnp.zeros((1, 64, 1, 64)),
        jnp.zeros((1,), jnp.int32),
        jnp.ones((1, 1, 1), bool),
    )
    with pytest.raises(NotImplementedError, match="interpret"):
        mosaic_gpu.tree_attention_mosaic_gpu(*args, interpret=True)
    with pytest.raises(ValueError, match="float32"):
        mosaic_gpu.tree_attention_mosaic_gpu(*args)


def test_dispatcher_on_cpu():
    q, k = jnp.zeros((1, 2, 4, 64)), jnp.zeros((1, 64, 2, 64))
    resolve = kernels_pallas.resolve_implementation
    assert resolve("auto", q, k, interpret=False) == "xla"
    assert resolve("pallas", q, k, interpret=True) == "triton"
    assert resolve("pallas", q, k[:, :40], interpret=True) == "xla"  # S = 40 fits no key block
    assert resolve("mosaic_tpu", q, k, interpret=True) == "mosaic_tpu"
    with pytest.raises(ValueError, match="no kernel for backend"):
        resolve("pallas", q, k, interpret=False)
    with pytest.raises(ValueError, match="implementation='cuda'"):
        resolve("cuda", q, k, interpret=False)
    args, ref = make_problem(
        3, batch=2, block=4, heads=4, kv_heads=2, head_dim=64, slots=64, dtype=jnp.float32
    )
    clean = (args[0], jnp.nan_to_num(args[1]), jnp.nan_to_num(args[2]), *args[3:])
    np.testing.assert_array_equal(kernels_pallas.tree_attention(*clean), ref)
    out = jax.jit(
        lambda *a: kernels_pallas.tree_attention(*a, implementation="pallas", interpret=True)
    )(*args)
    assert_close(out, ref, jnp.float32)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: {**a, "k": a["k"].astype(jnp.bfloat16)}, "share a dtype"),
        (lambda a: {**a, "q": jnp.zeros((1, 2, 3, 64))}, "multiple of num_kv_heads=2"),
        (lambda a: {**a, "lengths": jnp.zeros((2,), jnp.int32)}, r"lengths must be int \[B=1\]"),
        (lambda a: {**a, "region_mask": jnp.ones((1, 2, 1), bool)}, "R=1 must be >= block T=2"),
        (lambda a: {**a, "region_mask": jnp.ones((1, 2, 2), jnp.int32)}, "must be bool"),
    ],
    ids=["dtype", "gqa", "lengths", "width", "mask_dtype"],
)
def test_input_errors_name_the_values(change, message):
    args = {
        "q": jnp.zeros((1, 2, 4, 64)),
        "k": jnp.zeros((1, 64, 2, 64)),
        "v": jnp.zeros((1, 64, 2, 64)),
        "lengths": jnp.zeros((1,), jnp.int32),
        "region_mask": jnp.ones((1, 2, 2), bool),
    }
    with pytest.raises(ValueError, match=message):
        triton.tree_attention_triton(**change(args), interpret=True)


def test_pack_region_mask_round_trips():
    rng = np.random.default_rng(0)
    region = rng.random((2, 5, 37)) < 0.5  # T = 5, R = 37: two words, the second partial
    shape = tc.TreeShape(
        batch=2, block=5, num_heads=6, head_dim=64, num_slots=64, num_kv_heads=2, width=37
    )
    words = np.asarray(tc.pack_region_mask(jnp.asarray(region), shape, rows_padded=16))
    assert words.shape == (2, 2, 16)  # [B, W, M_pad]
    bits = (words.view(np.uint32)[..., None] >> np.arange(32)) & 1  # [B, W, M_pad, 32]
    unpacked = bits.transpose(0, 2, 1, 3).reshape(2, 16, 64)[:, :, :37].astype(bool)
    np.testing.assert_array_equal(unpacked[:, :15], np.repeat(region, 3, axis=1))  # G = 3
    assert not unpacked[:, 15:].any()


def test_merge_splits_equals_one_softmax():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(1, 1, 3, 12)) * 3  # [B, K, M, S]: keys split into 3 parts of 4
    values = rng.normal(size=(1, 1, 12, 5))
    full = jax.nn.softmax(scores, -1) @ values
    lse, parts = [], []
    for p in range(3):
        s = scores[..., 4 * p : 4 * p + 4]
        lse.append(jax.scipy.special.logsumexp(s, -1) * tc.LOG2E)
        parts.append(jax.nn.softmax(s, -1) @ values[:, :, 4 * p : 4 * p + 4])
    lse.append(jnp.full_like(lse[0], tc.EMPTY_LSE))  # an empty split contributes nothing
    parts.append(jnp.full_like(parts[0], 1e3))
    merged = tc.merge_splits(jnp.stack(parts, 2), jnp.stack(lse, 2))
    np.testing.assert_allclose(merged, full, rtol=1e-5, atol=1e-5)
    all_empty = tc.merge_splits(jnp.zeros((1, 1, 2, 3, 5)), jnp.full((1, 1, 2, 3), tc.EMPTY_LSE))
    np.testing.assert_array_equal(all_empty, 0.0)
