"""The model's projections (`specdec.projection`): which path a product takes, and every path
computing the same product as the plain einsum."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import matvec_triton
from specdec import projection

SPECS = [  # the model's four projections: (spec, x shape, w shape)
    ("BTD,DKJH->BTKJH", (1, 1, 32), (32, 3, 2, 16)),  # q / k / v
    ("BTNH,NHD->BTD", (1, 1, 4, 16), (4, 16, 32)),  # o
    ("BTD,DCF->BTCF", (2, 3, 32), (32, 2, 64)),  # gate / up, 6 rows
    ("BTF,FD->BTD", (1, 1, 64), (64, 32)),  # down
]
HIGHEST = jax.lax.Precision.HIGHEST


@pytest.mark.parametrize("choice", ["xla", "pallas"])
@pytest.mark.parametrize("spec, x_shape, w_shape", SPECS)
def test_every_path_computes_the_einsum(monkeypatch, choice, spec, x_shape, w_shape):
    monkeypatch.setenv(projection.SKINNY_ENV, choice)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
    out = projection.project(spec, x, w, jnp.float32, HIGHEST)
    expected = jnp.einsum(spec, x, w, precision=HIGHEST)
    assert out.shape == expected.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_paths_chosen(monkeypatch):
    f32, bf16 = jnp.float32, jnp.bfloat16
    monkeypatch.setenv(projection.SKINNY_ENV, "auto")
    assert projection.implementation(1, 768, 2304, bf16) == "xla"  # no GPU here
    monkeypatch.setenv(projection.SKINNY_ENV, "pallas")
    assert projection.implementation(1, 768, 2304, f32) == "pallas"
    assert projection.implementation(matvec_triton.MAX_ROWS + 1, 768, 2304, f32) == "xla"


def test_kernel_pays_where_it_measured_faster():
    assert matvec_triton.pays(1, 768, 2304)  # `small` q/k/v at one row: XLA multiply + reduce
    assert matvec_triton.pays(1, 4096, 6144)  # Llama-3-8B q/k/v at one row: a tuned tiling
    assert not matvec_triton.pays(8, 768, 2304)  # XLA's GEMM was as fast at 8 rows
    assert not matvec_triton.pays(1, 14336, 4096)  # 8B down: XLA faster than every tiling tried


def test_bad_choice_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(projection.SKINNY_ENV, "cublas")
    with pytest.raises(ValueError, match="SPECDEC_SKINNY_MATMUL='cublas'"):
        projection.implementation(1, 64, 64, jnp.float32)


@pytest.mark.parametrize("choice", ["xla", "pallas"])
@pytest.mark.parametrize("spec, x_shape, w_shape", [SPECS[0], SPECS[2]])  # the pre-norm ones
def test_normed_rows_are_normalised_on_every_path(monkeypatch, choice, spec, x_shape, w_shape):
    """`NormedRows` through XLA and through the kernel (the norm's factors, 1 / rms as the row
    scale): the einsum of the RMS-normalised rows (float32, rows of very different scales)."""
    monkeypatch.setenv(projection.SKINNY_ENV, choice)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=x_shape) * rng.uniform(0.1, 10, (*x_shape[:2], 1)), jnp.float32)
    g = jnp.asarray(1 + 0.2 * rng.normal(size=x_shape[-1:]), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
    out = projection.project(spec, projection.NormedRows(x, g, 1e-6), w, jnp.float32, HIGHEST)
    normed = x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * g
    expected = jnp.einsum(spec, normed, w, precision=HIGHEST)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="row_scale must be None"):
        projection.project(spec, projection.NormedRows(x, g, 1e-6), w, jnp.float32, HIGHEST, g)


@pytest.mark.parametrize("speculative", [False, True])
def test_generate_through_the_kernel_equals_xla(monkeypatch, llama, tiny_draft, speculative):
    """Greedy decoding (plain: 3 rows a step; DraftModel + Chain(3): up to 12 rows) with every
    decode-sized projection in the skinny kernel (interpret mode) emits XLA's tokens, float32."""
    import specdec
    from drafters import DraftModel
    from specdec.engine.generate import clear_compiled_loops
    from trees import Chain

    kernel, rows = matvec_triton.skinny_matmul, set()

    def spy(x, w, **kw):  # counts what reaches the kernel (traced once per compiled loop)
        rows.add(x.shape[0])
        return kernel(x, w, **kw)

    monkeypatch.setattr(matvec_triton, "skinny_matmul", spy)
    prompts = [[1, 5, 9, 14, 3], [7, 2], [4, 4, 8, 30, 12, 6, 2]]  # batch 3, ragged
    kwargs = dict(drafter=DraftModel(tiny_draft), policy=Chain(3)) if speculative else {}
    outs = []
    for choice in ("xla", "pallas"):
        monkeypatch.setenv(projection.SKINNY_ENV, choice)
        clear_compiled_loops()  # the choice is read when the loop is traced:
        jax.clear_caches()  # drop the executables and jax's traces of the loop
        outs.append(specdec.generate(llama, prompts, max_new_tokens=10, **kwargs))
    clear_compiled_loops()
    assert 3 in rows and (not speculative or 12 in rows)  # decode steps and 4-token verifies
    np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
    np.testing.assert_array_equal(outs[0].lengths, outs[1].lengths)


def _dot_operand_types(lowered_text: str) -> set[tuple[str, str]]:
    """(lhs, rhs) element types of every dot_general in a lowered (StableHLO) program."""
    tensor = r"tensor<(?:[\d?]+x)*([a-z]+\d+)>"
    found = re.findall(rf"dot_general.*: \({tensor}, {tensor}\)", lowered_text)
    return set(found)


@pytest.mark.parametrize(
    "spec, x_shape, w_shape",
    [*[s[:3] for s in SPECS], ("...D,DV->...V", (2, 3, 32), (32, 40))],  # + the LM head
)
def test_low_precision_backward_runs_its_matmuls_in_bf16(spec, x_shape, w_shape):
    """einsum_f32 in bf16: the gradients equal autodiff of the bf16-rounded product to bf16
    precision, come back in the operands' float32, and every matmul of the backward pass takes
    bf16 operands (autodiff of the plain einsum upcasts them and runs float32 GEMMs)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)

    def rounded(x, w):  # the same product, differentiated by jax in float32
        bf = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)
        return jnp.einsum(spec, bf(x), bf(w), precision=HIGHEST)

    def mixed(x, w):
        return projection.einsum_f32(spec, x, w, jnp.bfloat16, jax.lax.Precision.DEFAULT)

    def loss(fn, x, w):
        return jnp.sum(jnp.sin(fn(x, w)))

    expected = jax.grad(loss, argnums=(1, 2))(rounded, x, w)
    grads = jax.grad(loss, argnums=(1, 2))(mixed, x, w)
    for got, want in zip(grads, expected, strict=True):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, atol=2e-2 * float(jnp.max(jnp.abs(want))))
    lowered = jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0).lower(mixed, x, w)
    assert _dot_operand_types(lowered.as_text()) == {("bf16", "bf16")}
    plain = jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0).lower(rounded, x, w)
    assert ("f32", "f32") in _dot_operand_types(plain.as_text())  # what the test guards against


def test_bf16_train_step_has_no_float32_matmul():
    """The `tiny` train step in bf16 compute (XLA attention): every projection and the LM head,
    forward and backward, multiply bf16 operands; only attention's probabilities x values mix."""
    from flax import nnx

    from specdec.model import Transformer
    from train.configs import get_config
    from train.steps import ModelDef, init_state, make_train_step

    cfg = get_config("tiny", batch_size=2, seq_len=32)
    module = Transformer(
        cfg.model, rngs=nnx.Rngs(0), param_dtype=jnp.float32, dtype=jnp.bfloat16, attention="xla"
    )
    model, params = ModelDef.split(module)
    tokens = jnp.zeros((2, 33), jnp.int32)
    step = jax.jit(make_train_step(model, cfg))
    text = step.lower(init_state(params, cfg), tokens, jnp.float32(1e-3)).as_text()
    assert ("f32", "f32") not in _dot_operand_types(text)
    assert ("bf16", "bf16") in _dot_operand_types(text)


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("spec, x_shape, w_shape", [s[:3] for s in SPECS])
def test_hand_written_backward_equals_autodiff(spec, x_shape, w_shape, scaled):
    """The custom VJP's algebra (its row_scale gradient reduced over x's features, dw from the
    scaled x), run in float32 at full precision: equal to autodiff of the plain product."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
    scale = jnp.asarray(rng.uniform(0.5, 2.0, size=(*x_shape[:2], 1)), jnp.float32)
    scale = scale if scaled else None

    def loss(fn, x, w, scale):
        return jnp.sum(jnp.sin(fn(spec, x, w, scale, jnp.float32, HIGHEST)))

    argnums = (1, 2, 3) if scaled else (1, 2)
    want = jax.grad(loss, argnums=argnums)(projection._product, x, w, scale)
    got = jax.grad(loss, argnums=argnums)(projection._mixed_product, x, w, scale)
    for g, e in zip(got, want, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
