"""The skinny-matmul Triton kernel against XLA's dot, on CPU in Pallas interpret mode.

Rows are padded to the block's rows in the wrapper (no block may span past its array: on the H200
such a block corrupted neighbouring buffers); a test pins that on the traced pallas_call.
Interpret mode does not lower to Triton: the kernel is also checked
to lower for CUDA (jax.export) at the model shapes. Shapes are tiny: interpret mode runs the grid
as a loop of XLA ops.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.bench_matvec import SHAPES as MODEL_SHAPES  # (K, N) of served projections
from kernels_pallas import matvec_triton as mv
from kernels_pallas.matvec_triton import MatvecBlocks, skinny_matmul, skinny_matmul_reference

# Max abs error of outputs scaled by 1 / sqrt(K) (x, w ~ N(0, 1), so outputs are O(1) after it).
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 1e-3}


def make_inputs(seed, m, k, n, dtype):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (m, k), jnp.float32).astype(dtype)  # [M, K]
    w = jax.random.normal(kw, (k, n), jnp.float32).astype(dtype)  # [K, N]
    return x, w


def assert_close(out, ref, k, dtype):
    assert out.shape == ref.shape and out.dtype == jnp.float32
    out, ref = np.asarray(out), np.asarray(ref, np.float32)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out / np.sqrt(k), ref / np.sqrt(k), atol=TOLERANCE[dtype], rtol=0)


# (M, K, N, dtype, blocks): one and several splits (3: not a power of two), both accumulation
# paths, M = 1, 5, 8, 16 (5: rows 5..7 or 5..15 of the blocks are padding).
CASES = {
    "M1_bcast_split2_f32": (1, 256, 128, jnp.float32, MatvecBlocks(64, 32, 2, use_dot=False)),
    "M1_dot_f32": (1, 128, 64, jnp.float32, MatvecBlocks(32, 32, 1, use_dot=True)),
    "M1_deferred_split4_f32": (
        1, 256, 64, jnp.float32, MatvecBlocks(32, 16, 4, use_dot=False, defer_reduce=True)
    ),
    "M5_dot_split3_f32": (5, 192, 96, jnp.float32, MatvecBlocks(32, 32, 3, use_dot=True)),
    "M5_deferred_split2_f32": (
        5, 128, 64, jnp.float32, MatvecBlocks(16, 16, 2, use_dot=False, defer_reduce=True)
    ),
    "M8_bcast_split4_f32": (8, 256, 64, jnp.float32, MatvecBlocks(64, 16, 4, use_dot=False)),
    "M8_dot_f32": (8, 128, 128, jnp.float32, MatvecBlocks(128, 16, 1, use_dot=True)),
    "M16_dot_split2_f32": (16, 256, 64, jnp.float32, MatvecBlocks(32, 64, 2, use_dot=True)),
    "M16_bcast_f32": (16, 64, 32, jnp.float32, MatvecBlocks(32, 32, 1, use_dot=False)),
    "M1_bcast_bf16": (1, 512, 256, jnp.bfloat16, MatvecBlocks(128, 64, 4, use_dot=False)),
    "M4_bcast_split2_bf16": (4, 256, 128, jnp.bfloat16, MatvecBlocks(64, 32, 2, use_dot=False)),
    "M8_dot_split2_bf16": (8, 256, 128, jnp.bfloat16, MatvecBlocks(64, 64, 2, use_dot=True)),
    "M5_default_bf16": (5, 768, 256, jnp.bfloat16, None),
    "M1_default_f32": (1, 512, 128, jnp.float32, None),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_matches_reference(case):
    m, k, n, dtype, blocks = CASES[case]
    x, w = make_inputs(len(case), m, k, n, dtype)
    out = skinny_matmul(x, w, block_sizes=blocks, interpret=True)
    assert_close(out, skinny_matmul_reference(x, w), k, dtype)


@pytest.mark.parametrize(
    "m,k,n,blocks,message",
    [
        (1, 128, 96, MatvecBlocks(64, 32), "N=96 must be a multiple of"),
        (1, 192, 64, MatvecBlocks(64, 32, splits=4), "splits \\* block_k = 128"),
        (1, 144, 64, MatvecBlocks(64, 48, splits=3), "block_k=48 must be a power of two"),
        (2, 128, 64, MatvecBlocks(64, 32, use_dot=True, defer_reduce=True), "defer_reduce"),
    ],
    ids=["block_n", "splits_block_k", "power_of_two", "defer_with_dot"],
)
def test_bad_tiling_raises(m, k, n, blocks, message):
    x, w = make_inputs(0, m, k, n, jnp.float32)
    with pytest.raises(ValueError, match=message):
        skinny_matmul(x, w, block_sizes=blocks, interpret=True)


def test_bad_operands_raise():
    x, w = make_inputs(0, 2, 64, 32, jnp.float32)
    with pytest.raises(ValueError, match="share a dtype"):
        skinny_matmul(x, w.astype(jnp.bfloat16), interpret=True)
    with pytest.raises(ValueError, match="need x"):
        skinny_matmul(x, w[:32], interpret=True)


@pytest.mark.parametrize(
    "m,k,n", [(1, 100, 128), (1, 128, 24), (17, 128, 128)], ids=["K", "N", "M"]
)
def test_supports_is_false_for_untileable(m, k, n):
    assert not mv.supports(m, k, n)
    with pytest.raises(ValueError, match="no tiling"):
        mv.default_blocks(m, k, n)


@pytest.mark.parametrize("shape", MODEL_SHAPES, ids=list(MODEL_SHAPES))
def test_default_blocks_tile_model_shapes(shape):
    k, n = MODEL_SHAPES[shape]
    for m in (1, 2, 4, 5, 8, 16):
        assert mv.supports(m, k, n)
        blocks = mv.default_blocks(m, k, n)
        mv.check_blocks(m, k, n, blocks)  # raises if not
        if not blocks.use_dot:  # the broadcast product stays within the register budget
            rows = mv.padded_rows(m, blocks.use_dot)
            assert rows * blocks.block_k * blocks.block_n <= mv.MAX_PRODUCT_ELEMENTS


@pytest.mark.parametrize(
    "m,shape,blocks",
    [
        (1, "8b_down", None),
        (5, "8b_qkv", None),
        (16, "small_qkv", None),
        (1, "8b_qkv", MatvecBlocks(128, 128, 8, use_dot=False)),
        (2, "small_o", MatvecBlocks(64, 64, 4, use_dot=False, defer_reduce=True)),
        (8, "8b_gate_up", MatvecBlocks(256, 64, 2, num_warps=8, num_stages=5, use_dot=True)),
    ],
    ids=["M1_down_default", "M5_qkv_default", "M16_small_default", "bcast", "deferred", "dot"],
)
@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated:DeprecationWarning")
def test_lowers_to_triton_for_cuda(m, shape, blocks):
    """Every primitive has a Triton lowering and every loaded tile is a power of two (interpret
    mode checks neither). Triton's own compilation to PTX happens only on a GPU."""
    k, n = MODEL_SHAPES[shape]
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="cuda")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    unchecked = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    sds = jax.ShapeDtypeStruct
    with jax.sharding.use_abstract_mesh(mesh):
        fn = jax.jit(functools.partial(skinny_matmul, block_sizes=blocks))
        exported = jax.export.export(fn, platforms=["cuda"], disabled_checks=unchecked)(
            sds((m, k), jnp.bfloat16), sds((k, n), jnp.bfloat16)
        )
    assert "__gpu$xla.gpu.triton" in exported.mlir_module()
    assert exported.out_avals[0].shape == (m, n)


@pytest.mark.parametrize("m, use_dot", [(1, True), (5, False), (5, True), (16, True)])
def test_no_block_spans_past_its_array(m, use_dot):
    """Every operand and result of the pallas_call has exactly the block's rows (M padded in the
    wrapper), so the kernel relies on no masking of out-of-array rows."""
    k, n = 256, 128
    bs = MatvecBlocks(32, 64, splits=2, use_dot=use_dot)
    x, w = make_inputs(0, m, k, n, jnp.float32)
    jaxpr = jax.make_jaxpr(functools.partial(skinny_matmul, block_sizes=bs, interpret=True))(x, w)
    calls = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "pallas_call"]
    assert len(calls) == 1
    rows = mv.padded_rows(m, use_dot)
    assert calls[0].invars[0].aval.shape == (rows, k)
    assert calls[0].outvars[0].aval.shape == (2, rows, n)


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            if hasattr(param, "jaxpr") and hasattr(param.jaxpr, "eqns"):
                yield from _equations(param.jaxpr)
            elif hasattr(param, "eqns"):
                yield from _equations(param)


def test_benchmark_smoke_writes_its_table(tmp_path):
    """experiments/bench_matvec.py --smoke (interpret mode): every problem timed against XLA, each
    kept config checked against XLA's output, and a TUNED_BLOCKS table written."""
    import json

    from experiments import bench_matvec

    bench_matvec.main(["--smoke", "--rows", "1,3", "--shapes", "tiny_a", "--out", str(tmp_path)])
    problems = json.loads((tmp_path / "bench_matvec.json").read_text())["problems"]
    assert [(p["shape"], p["M"]) for p in problems] == [("tiny_a", 1), ("tiny_a", 3)]
    assert all(p["best"] and p["best"]["err"] < bench_matvec.MAX_ERROR for p in problems)
    assert "TUNED_BLOCKS = {" in (tmp_path / "bench_matvec.md").read_text()
