"""Quantised-KV (QuantSpec) attention kernels against the jnp reference, on CPU in interpret mode.

Caches are built through the real `QuantCache` (a staged prefill, then a region written by a
random tree) with ragged lengths, so the planes, scales, buffer window and region match what the
decode loop produces. Both views are checked: INT8 (target) and INT4 (draft, no lower planes).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import quant_attention_tpu as tpu
from kernels_pallas import quant_attention_triton as triton
from kernels_pallas.quant_attention import quant_attention
from kernels_pallas.quant_reference import QuantLayerView, quant_attention_reference
from kernels_pallas.testing import random_tree_mask
from specdec.quant_cache import QuantCache, QuantKV

TOLERANCE = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}


def make_problem(seed, *, batch, block, heads, kv_heads, head_dim, lengths, group, dtype):
    """q [B, T, N, H], a QuantCache layer holding `lengths` committed tokens + a random tree."""
    rng = np.random.default_rng(seed)
    mode = QuantKV(group=group, recent=group)
    cap = 4 * group * 2
    cache = QuantCache.create(mode, 1, batch, cap, kv_heads, head_dim, block, dtype)
    keys = jax.random.split(jax.random.key(seed), 5)
    prompt = 3 * group  # a staged prefill block (longer than the buffer)
    k = jax.random.normal(keys[0], (batch, prompt, kv_heads, head_dim)) * 2 + 0.5
    v = jax.random.normal(keys[1], (batch, prompt, kv_heads, head_dim))
    offs = jnp.broadcast_to(jnp.arange(prompt, dtype=jnp.int32), (batch, prompt))
    cache = cache.write(0, k.astype(dtype), v.astype(dtype), offs)
    cache = cache.with_lengths(jnp.asarray(lengths, jnp.int32))
    kt = jax.random.normal(keys[2], (batch, block, kv_heads, head_dim)).astype(dtype)
    vt = jax.random.normal(keys[3], (batch, block, kv_heads, head_dim)).astype(dtype)
    offs = jnp.broadcast_to(jnp.arange(block, dtype=jnp.int32), (batch, block))
    cache = cache.write(0, kt, vt, offs)
    q = jax.random.normal(keys[4], (batch, block, heads, head_dim)).astype(dtype)
    region = jnp.asarray(random_tree_mask(rng, batch, block, block))
    return q, cache, region


CASES = {
    "decode": dict(batch=2, block=1, heads=4, kv_heads=2, lengths=[5, 70]),
    "tree": dict(batch=3, block=5, heads=4, kv_heads=1, lengths=[0, 33, 80]),
}


@pytest.mark.parametrize(
    "view,dtype",
    [("int8", jnp.float32), ("int4", jnp.float32), ("int8", jnp.bfloat16)],
    ids=["int8-f32", "int4-f32", "int8-bf16"],
)
@pytest.mark.parametrize("case", sorted(CASES))
def test_triton_kernel_matches_reference(case, view, dtype):
    q, cache, region = make_problem(0, head_dim=32, group=32, dtype=dtype, **CASES[case])
    layer = cache.with_view(view).read(0)
    assert triton.fits(q, layer)
    want = quant_attention_reference(q, layer, cache.lengths, region)
    got = triton.quant_attention_triton(q, layer, cache.lengths, region, interpret=True)
    err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32))))
    assert err < TOLERANCE[dtype], err


def test_int4_and_int8_views_differ():
    """The draft view really reads less: its output differs from the target's."""
    q, cache, region = make_problem(1, head_dim=32, group=32, dtype=jnp.float32, **CASES["tree"])
    int8 = quant_attention_reference(q, cache.read(0), cache.lengths, region)
    int4 = quant_attention_reference(q, cache.with_view("int4").read(0), cache.lengths, region)
    assert float(jnp.max(jnp.abs(int8 - int4))) > 1e-3


def test_dispatch_and_layout_errors():
    q, cache, region = make_problem(2, head_dim=32, group=32, dtype=jnp.float32, **CASES["decode"])
    with pytest.raises(ValueError, match="no mosaic_gpu kernel"):
        quant_attention(q, cache.read(0), cache.lengths, region, implementation="mosaic_gpu")
    with pytest.raises(ValueError, match="implementation='cuda'"):
        quant_attention(q, cache.read(0), cache.lengths, region, implementation="cuda")
    # Value groups smaller than the head: the kernel refuses, the dispatcher uses the reference.
    small = QuantCache.create(QuantKV(16), 1, 1, 128, 1, 64, 1, jnp.float32)
    q64, one = jnp.ones((1, 1, 2, 64), jnp.float32), jnp.ones((1, 1, 1), bool)
    with pytest.raises(ValueError, match="value groups covering the head"):
        triton.quant_attention_triton(q64, small.read(0), small.lengths, one, interpret=True)
    out = quant_attention(
        q64, small.read(0), small.lengths, one, implementation="pallas", interpret=True
    )
    assert out.shape == q64.shape


def test_model_forward_uses_the_kernel_on_its_real_path():
    """A model with attention="interpret" reads its QuantCache through the Triton kernel and gives
    the reference path's logits (prefill, then a tree block over the quantised context)."""
    import specdec
    from specdec.cache import Region
    from specdec.config import tiny_config
    from specdec.quant_cache import make_cache

    # One layer: its cached K/V come from the embeddings, bit-identical on both paths (deeper
    # layers' K/V differ by float noise that can flip a quantisation level: a real, s/16 change).
    cfg = tiny_config(
        vocab_size=64, hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=32
    )
    mode = QuantKV(group=32, recent=32)
    rng = np.random.default_rng(4)
    prompt = jnp.asarray(rng.integers(0, 64, (2, 96)), jnp.int32)
    lens = jnp.asarray([96, 81], jnp.int32)
    tree = jnp.asarray(random_tree_mask(rng, 2, 4, 4))
    tokens = jnp.asarray(rng.integers(0, 64, (2, 4)), jnp.int32)
    depths = jnp.sum(tree, axis=-1, dtype=jnp.int32) - 1  # [B, T]

    def logits(attention: str) -> jax.Array:
        model = specdec.Model.random(cfg, seed=5, attention=attention)

        @jax.jit
        def run(net):
            module = net.module()
            cache = make_cache(mode, cfg, 2, 256, 4, jnp.float32)
            cache = module.prefill(prompt, lens, cache).cache
            out = module(tokens, lens[:, None] + depths, cache, Region.tree(tree))
            return module.logits(out.hidden)

        return run(model.net)

    np.testing.assert_allclose(logits("interpret"), logits("xla"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "planes"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_both_int8_operand_modes_match_the_reference(case, dtype, fused):
    """The INT8 view with both nibbles as one 8-bit operand (the default; float16 bit trick
    under bf16) and as two nibble operands (one dot per plane)."""
    q, cache, region = make_problem(6, head_dim=32, group=32, dtype=dtype, **CASES[case])
    layer = cache.with_view("int8").read(0)
    want = quant_attention_reference(q, layer, cache.lengths, region)
    sizes = triton.BlockSizes(block_m=16, block_k=16, num_splits=2, fused_planes=fused)
    got = triton.quant_attention_triton(
        q, layer, cache.lengths, region, block_sizes=sizes, interpret=True
    )
    err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32))))
    assert err < TOLERANCE[dtype], err


def test_byte_operands_are_the_levels_of_both_planes():
    """Every (upper, lower) byte pair: the float16 operand minus its offset is 16 u + l, exactly,
    for both head halves (low nibbles: channel j, high nibbles: channel j + H/2)."""
    hi, lo = (x.ravel().astype(np.uint8) for x in np.meshgrid(np.arange(256), np.arange(256)))
    for dtype in (jnp.float16, jnp.float32):
        c_a, c_b, offset = triton._byte_operands(jnp.asarray(hi), jnp.asarray(lo), dtype)
        for got, want in ((c_a, 16 * (hi & 15) + (lo & 15)), (c_b, 16 * (hi >> 4) + (lo >> 4))):
            np.testing.assert_array_equal(np.asarray(got, np.float32) - offset, want)


@pytest.mark.parametrize("splits", [1, 3])
def test_key_splits_give_the_same_result(splits):
    q, cache, region = make_problem(5, head_dim=32, group=32, dtype=jnp.float32, **CASES["tree"])
    layer = cache.read(0)
    want = quant_attention_reference(q, layer, cache.lengths, region)
    sizes = triton.BlockSizes(block_m=16, block_k=16, num_splits=splits)
    got = triton.quant_attention_triton(
        q, layer, cache.lengths, region, block_sizes=sizes, interpret=True
    )
    assert float(jnp.max(jnp.abs(got - want))) < TOLERANCE[jnp.float32]


# ---- the Mosaic TPU kernel ----

TPU_LENGTHS = {"decode": [20, 280], "tree": [0, 132, 320]}  # group 128: position 256+ reads group 0


@pytest.mark.parametrize("case,view", [("decode", "int8"), ("tree", "int4"), ("tree", "int8")])
def test_tpu_kernel_matches_reference(case, view):
    dims = {**CASES[case], "lengths": TPU_LENGTHS[case]}
    q, cache, region = make_problem(6, head_dim=32, group=128, dtype=jnp.float32, **dims)
    layer = cache.with_view(view).read(0)
    want = quant_attention_reference(q, layer, cache.lengths, region)
    got = tpu.quant_attention_tpu(q, layer, cache.lengths, region, interpret=True)
    assert float(jnp.max(jnp.abs(got - want))) < TOLERANCE[jnp.float32]


def _view_structs(batch, block, heads, kv_heads, head_dim, slots, upper_only):
    """ShapeDtypeStructs of a bf16 model's QuantLayerView (group 128) and its attention inputs."""
    sd, buf = jax.ShapeDtypeStruct, 384
    plane = lambda: sd((batch, slots, kv_heads, head_dim // 2), jnp.uint8)
    k_scales = sd((batch, slots // 128, kv_heads, head_dim), jnp.float16)
    v_scales = sd((batch, slots, kv_heads, 1), jnp.float16)
    view = QuantLayerView(
        k_hi=plane(), k_lo=None if upper_only else plane(), k_scale=k_scales, k_min=k_scales,
        v_hi=plane(), v_lo=None if upper_only else plane(), v_scale=v_scales, v_min=v_scales,
        k_buf=sd((batch, buf, kv_heads, head_dim), jnp.bfloat16),
        v_buf=sd((batch, buf, kv_heads, head_dim), jnp.bfloat16),
        base=sd((batch,), jnp.int32), group=128, recent=128,
    )  # fmt: skip
    q = sd((batch, block, heads, head_dim), jnp.bfloat16)
    return q, view, sd((batch,), jnp.int32), sd((batch, block, block), jnp.bool_)


# (batch, block, heads, kv heads, head dim, slots, INT4 view) of the lowering tests.
LOWERING_DIMS = pytest.mark.parametrize(
    "dims",
    [
        (2, 1, 32, 8, 128, 1024, False),
        (2, 16, 32, 8, 128, 1024, True),
        (1, 16, 12, 4, 64, 2048, False),
    ],
    ids=["decode_llama8b_int8", "T16_llama8b_int4", "T16_small_int8"],
)


@LOWERING_DIMS
def test_tpu_kernel_lowers_for_tpu(dims):
    device = jax.sharding.AbstractDevice(device_kind="TPU v5 lite", num_cores=1, platform="tpu")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    with jax.sharding.use_abstract_mesh(mesh):
        exported = jax.export.export(jax.jit(tpu.quant_attention_tpu), platforms=["tpu"])(
            *_view_structs(*dims)
        )
    assert "tpu_custom_call" in exported.mlir_module()


@LOWERING_DIMS
@pytest.mark.parametrize("fused", [False, True], ids=["planes", "fused"])
def test_triton_kernel_lowers_for_cuda(dims, fused):
    """Every primitive of the bf16 kernel (the nibble bitcasts included) has a Triton lowering:
    interpret mode, which the tests above run, does not lower to Triton."""
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="cuda")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    unchecked = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    with jax.sharding.use_abstract_mesh(mesh):
        sizes = triton.BlockSizes(block_m=64, block_k=64, num_splits=4, fused_planes=fused)
        kernel = functools.partial(triton.quant_attention_triton, block_sizes=sizes)
        exported = jax.export.export(
            jax.jit(kernel), platforms=["cuda"], disabled_checks=unchecked
        )(*_view_structs(*dims))
    assert "__gpu$xla.gpu.triton" in exported.mlir_module()
