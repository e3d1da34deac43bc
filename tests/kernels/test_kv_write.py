"""The one-kernel K/V cache write (kernels_pallas/kv_write.py) against XLA's scatter, on CPU in
interpret mode, its CUDA lowering, and the cache and decode loop routed through it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import kv_write


def _buffers(seed, batch, slots, kv_heads, head_dim, block, dtype):
    keys = jax.random.split(jax.random.key(seed), 4)
    cache = [
        jax.random.normal(k, (batch, slots, kv_heads, head_dim)).astype(dtype) for k in keys[:2]
    ]
    new = [jax.random.normal(k, (batch, block, kv_heads, head_dim)).astype(dtype) for k in keys[2:]]
    return (*cache, *new)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize(
    "slots",
    [
        [[0], [7], [39]],  # one token per row (plain decoding), ragged lengths
        [[0, 1, 2, 3, 4], [35, 36, 37, 38, 39], [37, 38, 39, 40, 41]],  # the last two dropped
        [[3, 9, 4, 12, 5], [25, 2, 30, 0, 17], [20, 52, 22, 23, 24]],  # unordered; 52 dropped
    ],
    ids=["decode", "block_with_overflow", "scattered"],
)
def test_kernel_writes_what_the_scatter_writes(slots, dtype):
    slots = jnp.asarray(slots, jnp.int32)
    batch, block = slots.shape
    k_cache, v_cache, k_new, v_new = _buffers(1, batch, 40, 2, 16, block, dtype)
    want = kv_write.kv_write_reference(k_cache, v_cache, k_new, v_new, slots)
    got = kv_write.kv_write_triton(k_cache, v_cache, k_new, v_new, slots, interpret=True)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))


def test_shapes_it_cannot_tile_are_refused_by_name():
    k_cache, v_cache, k_new, v_new = _buffers(2, 1, 8, 3, 8, 1, jnp.float32)  # K * H = 24
    assert not kv_write.fits(k_cache)
    with pytest.raises(ValueError, match="power of two"):
        kv_write.kv_write_triton(k_cache, v_cache, k_new, v_new, jnp.zeros((1, 1), jnp.int32))
    k_cache, v_cache, k_new, v_new = _buffers(2, 2, 8, 2, 8, 1, jnp.float32)
    with pytest.raises(ValueError, match="slots"):
        kv_write.kv_write_triton(k_cache, v_cache, k_new, v_new, jnp.zeros((2, 3), jnp.int32))


@pytest.mark.parametrize("block", [1, 5])
def test_kernel_lowers_for_cuda(block):
    """Every primitive has a Triton lowering (interpret mode, above, does not lower to Triton),
    and the caches are aliased to the outputs."""
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="cuda")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    unchecked = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    cache = jax.ShapeDtypeStruct((8, 1024, 8, 128), jnp.bfloat16)
    new = jax.ShapeDtypeStruct((8, block, 8, 128), jnp.bfloat16)
    slots = jax.ShapeDtypeStruct((8, block), jnp.int32)
    with jax.sharding.use_abstract_mesh(mesh):
        exported = jax.export.export(
            jax.jit(kv_write.kv_write_triton), platforms=["cuda"], disabled_checks=unchecked
        )(cache, cache, new, new, slots)
    text = exported.mlir_module()
    assert "__gpu$xla.gpu.triton" in text
    assert "output_operand_alias" in text


def test_decoding_through_the_kernel_gives_the_same_tokens(monkeypatch):
    """Plain and speculative greedy decoding, batch 3 with ragged prompts, float32: the same
    tokens whether the cache writes go through the kernel (interpret mode) or XLA."""
    import specdec
    from drafters import NGram
    from specdec import cache as cache_module
    from specdec.config import tiny_config

    cfg = tiny_config(
        vocab_size=64, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16
    )
    model = specdec.Model.random(cfg, seed=3)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 64, n).tolist() for n in (5, 9, 7)]
    run = functools.partial(specdec.generate, model, prompts, max_new_tokens=12)
    calls = []
    traced = kv_write.kv_write_triton
    monkeypatch.setattr(
        kv_write, "kv_write_triton", lambda *a, **k: calls.append(1) or traced(*a, **k)
    )
    outputs = {}
    for choice in ("xla", "pallas"):
        monkeypatch.setenv(cache_module.KV_WRITE_ENV, choice)  # part of the compiled loop's key
        outputs[choice] = (run().tokens, run(drafter=NGram(max_ngram=2)).tokens)
        assert bool(calls) == (choice == "pallas")
    assert calls  # the "pallas" runs went through the kernel (traced once per layer and loop)
    for xla_tokens, kernel_tokens in zip(outputs["xla"], outputs["pallas"], strict=True):
        np.testing.assert_array_equal(kernel_tokens, xla_tokens)


def test_a_bad_setting_is_named(monkeypatch):
    from specdec import cache as cache_module

    monkeypatch.setenv(cache_module.KV_WRITE_ENV, "triton")
    with pytest.raises(ValueError, match="SPECDEC_KV_WRITE='triton'"):
        cache_module.kv_write_choice()
