"""The shared sampling module against straightforward numpy definitions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specdec.sampling import SamplingParams, probabilities, sample, sample_without_replacement


def _reference(logits, temperature, top_k, top_p):
    """numpy: temperature, then top-k (ties kept), then nucleus (mass before token < top_p)."""
    if temperature == 0:
        out = np.zeros_like(logits)
        out[np.argmax(logits)] = 1.0
        return out
    x = logits / temperature
    if top_k:
        kth = np.sort(x)[::-1][top_k - 1]
        x = np.where(x < kth, -np.inf, x)
    p = np.exp(x - x.max())
    p /= p.sum()
    if top_p < 1:
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        keep = np.zeros_like(p, bool)
        keep[order[before < top_p]] = True
        threshold = p[keep].min()
        x = np.where(p < threshold, -np.inf, x)
        p = np.exp(x - x.max())
        p /= p.sum()
    return p


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [
        (0.0, 0, 1.0),
        (1.0, 0, 1.0),
        (0.7, 0, 1.0),
        (1.3, 5, 1.0),
        (1.0, 0, 0.8),
        (0.9, 7, 0.6),
        (1.0, 1, 1.0),
        (2.0, 0, 0.05),
        (1.0, 64, 1.0),
    ],
)
def test_probabilities_match_reference(temperature, top_k, top_p):
    logits = np.asarray(jax.random.normal(jax.random.key(3), (4, 64)) * 3, np.float32)
    got = np.asarray(
        probabilities(jnp.asarray(logits), SamplingParams.create(temperature, top_k, top_p))
    )
    for row, want in zip(got, logits, strict=True):
        np.testing.assert_allclose(row, _reference(want, temperature, top_k, top_p), atol=1e-6)


def test_sample_follows_distribution():
    probs = jnp.array([0.1, 0.0, 0.6, 0.3])
    draws = np.asarray(sample(jax.random.key(0), jnp.broadcast_to(probs, (20000, 4))))
    freq = np.bincount(draws, minlength=4) / draws.size
    assert freq[1] == 0
    np.testing.assert_allclose(freq, probs, atol=0.015)


def test_sample_without_replacement_is_distinct_and_marks_impossible_draws():
    probs = jnp.broadcast_to(jnp.array([0.5, 0.0, 0.3, 0.2, 0.0]), (500, 5))
    tokens, ok = sample_without_replacement(jax.random.key(1), probs, 4)
    tokens, ok = np.asarray(tokens), np.asarray(ok)
    assert ok[:, :3].all() and not ok[:, 3].any()  # only 3 tokens have mass
    assert all(len(set(row[:3])) == 3 and 1 not in row[:3] and 4 not in row[:3] for row in tokens)
    # first draw is a plain draw from probs
    freq = np.bincount(tokens[:, 0], minlength=5) / 500
    np.testing.assert_allclose(freq, [0.5, 0, 0.3, 0.2, 0], atol=0.07)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=math.nan), "temperature"),
        (dict(temperature=math.inf), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=math.nan), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(temperature="hot"), "number"),
    ],
)
def test_bad_sampling_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams.create(**kwargs)


@pytest.mark.parametrize("mode", ["greedy", "sample", "filter"])
def test_every_mode_is_greedy_at_temperature_zero(mode):
    """The mode only prunes work: parameters built directly (not by `create`) at temperature 0
    still give the one-hot on the argmax in the sampling modes."""
    params = SamplingParams(jnp.float32(0), jnp.int32(0), jnp.float32(1), mode=mode)
    out = probabilities(jnp.asarray([[1.0, 3.0, 2.0], [0.5, 0.1, 0.9]]), params)
    np.testing.assert_array_equal(out, [[0, 1, 0], [0, 0, 1]])


def test_modes_from_create_and_a_bad_mode():
    assert SamplingParams.create(0.0, top_k=3).mode == "greedy"
    assert SamplingParams.create(0.7).mode == "sample"
    assert SamplingParams.create(0.7, top_k=3).mode == "filter"
    assert SamplingParams.create(0.7, top_p=0.9).mode == "filter"
    with pytest.raises(ValueError, match="sampling mode must be one of"):
        SamplingParams(jnp.float32(1), jnp.int32(0), jnp.float32(1), mode="beam")
