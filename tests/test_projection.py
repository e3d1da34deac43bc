"""The model's projections (`specdec.projection`): which path a product takes, and every path
computing the same product as the plain einsum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specdec import projection

SPECS = [  # the model's four projections: (spec, x shape, w shape)
    ("BTD,DKJH->BTKJH", (1, 1, 32), (32, 3, 2, 16)),  # q / k / v
    ("BTNH,NHD->BTD", (1, 1, 4, 16), (4, 16, 32)),  # o
    ("BTD,DCF->BTCF", (2, 3, 32), (32, 2, 64)),  # gate / up, 6 rows
    ("BTF,FD->BTD", (1, 1, 64), (64, 32)),  # down
]
HIGHEST = jax.lax.Precision.HIGHEST


@pytest.mark.parametrize("choice", ["xla", "pallas", "xla-two-rows"])
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
    assert projection.implementation(projection.MAX_ROWS + 1, 768, 2304, f32) == "xla"
    monkeypatch.setenv(projection.SKINNY_ENV, "xla-two-rows")
    assert projection.implementation(1, 768, 2304, f32) == "xla-two-rows"
    assert projection.implementation(2, 768, 2304, f32) == "xla"


def test_bad_choice_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(projection.SKINNY_ENV, "cublas")
    with pytest.raises(ValueError, match="SPECDEC_SKINNY_MATMUL='cublas'"):
        projection.implementation(1, 64, 64, jnp.float32)


def test_two_rows_keeps_one_matmul_of_two_rows(monkeypatch):
    """The experiment's point: XLA keeps a dot of two rows instead of multiply + reduce."""
    monkeypatch.setenv(projection.SKINNY_ENV, "xla-two-rows")
    x = jnp.ones((1, 1, 64), jnp.float32)
    w = jnp.ones((64, 32), jnp.float32)
    hlo = (
        jax.jit(lambda x, w: projection.project("BTF,FD->BTD", x, w, jnp.float32, HIGHEST))
        .lower(x, w)
        .compile()
        .as_text()
    )
    assert "f32[2,64]" in hlo and " dot(" in hlo


@pytest.mark.parametrize("speculative", [False, True])
def test_generate_through_the_kernel_equals_xla(monkeypatch, llama, tiny_draft, speculative):
    """Greedy decoding (plain: 3 rows a step; DraftModel + Chain(3): up to 12 rows) with every
    decode-sized projection in the skinny kernel (interpret mode) emits XLA's tokens, float32."""
    import specdec
    from drafters import DraftModel
    from kernels_pallas import matvec_triton
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
