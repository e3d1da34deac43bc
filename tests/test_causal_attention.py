"""The training / scoring causal attention: its implementation choice and the cuDNN probe."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specdec import attention


def _reference(q, k, v):  # [B, T, N, H], [B, T, K, H] -> [B, T, N, H], GQA by repetition
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    t = q.shape[1]
    scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, -jnp.inf)
    return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(scores, axis=-1), v)


def test_causal_attention_matches_reference_with_gqa():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 9, 4, 16)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 9, 2, 16)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, 9, 2, 16)), jnp.float32)
    out = jax.jit(attention.causal_attention)(q, k, v)
    np.testing.assert_allclose(out, _reference(q, k, v), atol=1e-5, rtol=1e-5)


def test_cpu_and_float32_take_xla():
    q = jnp.zeros((1, 4, 4, 16), jnp.bfloat16)
    k = jnp.zeros((1, 4, 2, 16), jnp.bfloat16)
    assert attention.causal_implementation(q, k) == "xla"  # no GPU here
    assert attention.causal_implementation(q.astype(jnp.float32), k) == "xla"


def test_bad_choice_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(attention.CAUSAL_ENV, "flash")
    q = jnp.zeros((1, 4, 4, 16), jnp.float32)
    with pytest.raises(ValueError, match="SPECDEC_CAUSAL_ATTENTION='flash'"):
        attention.causal_implementation(q, q)


def test_probe_runs_eagerly_inside_a_trace_and_fails_closed():
    """The probe executes (forward and backward) even while a jit traces its caller, and says
    False where cuDNN cannot run (this CPU), so `auto` falls back to XLA instead of failing."""
    seen = {}

    @jax.jit
    def step(x):
        seen["xla"] = attention._probe_cudnn(jnp.float32, 4, 2, 16, implementation="xla")
        seen["cudnn"] = attention._probe_cudnn(jnp.bfloat16, 4, 2, 16)
        return x + 1

    assert float(step(1.0)) == 2.0
    assert seen == {"xla": True, "cudnn": False}
