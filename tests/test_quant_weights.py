"""4-bit draft weights (specdec.quant_weights): the quantiser's error bound, the model reading a
QuantWeight where a weight was, and QuantSpec's drafter carrying them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import specdec
from drafters import QuantSpec
from specdec import quant_weights as qw
from specdec.config import tiny_config
from specdec.quant_cache import QuantKV


def test_dequantized_weights_are_within_half_a_step_of_each_group():
    w = jax.random.normal(jax.random.key(0), (256, 3, 8), jnp.float32) * 0.3
    q = qw.quantize(w, contracted=1, group=64)
    assert q.levels.dtype == jnp.uint4 and q.levels.shape == (256, 24)
    assert q.scale.shape == q.minimum.shape == (4, 24)
    err = jnp.abs(q.dequantize(jnp.float32) - w).reshape(4, 64, 24)
    assert bool(jnp.all(err <= q.scale[:, None] / 2 * (1 + 1e-5)))
    # every group's minimum and maximum are represented (levels 0 and 15 are used)
    levels = np.asarray(q.levels.astype(jnp.int32)).reshape(4, 64, 24)
    assert (levels.min(axis=1) == 0).all() and (levels.max(axis=1) == qw.LEVELS).all()


def test_a_constant_group_is_exact():
    w = jnp.full((32, 2), 0.25, jnp.float32)
    np.testing.assert_array_equal(qw.quantize(w, 1, 16).dequantize(jnp.float32), w)


def test_bad_groups_are_clear_errors():
    with pytest.raises(
        ValueError, match=r"its 96 contracted features are not a multiple of group=64"
    ):
        qw.quantize(jnp.zeros((96, 4)), 1, 64)
    with pytest.raises(TypeError, match="read whole"):
        qw.quantize(jnp.zeros((16, 4)), 1, 16)[0]


def test_the_model_reads_quant_weights_as_their_dequantized_values():
    """A module whose projections (and untied LM head) are QuantWeights gives the logits of the
    same module with those weights dequantized into plain arrays (float32)."""
    model = specdec.Model.random(tiny_config(vocab_size=64), seed=3, attention="xla")
    weights = qw.quantize_model(model.net.module(), group=16)
    assert len(weights) == 4 * model.config.num_layers + 1  # + the untied LM head
    tokens = jnp.asarray([[3, 9, 27, 5]], jnp.int32)

    def logits(module):
        positions = jnp.arange(4, dtype=jnp.int32)[None]
        return module(tokens, positions, None, None).hidden

    quant = qw.with_weights(model.net.module(), weights)
    dense = qw.with_weights(
        model.net.module(), {p: w.dequantize(jnp.float32) for p, w in weights.items()}
    )
    want, got = dense.logits(logits(dense)), quant.logits(logits(quant))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    plain = model.net.module()
    assert not np.allclose(plain.logits(logits(plain)), got, atol=1e-3)  # they did change


def test_quantspec_carries_its_weights_as_pytree_leaves():
    model = specdec.Model.random(tiny_config(vocab_size=64), seed=3, attention="xla")
    drafter = QuantSpec.with_int4_weights(model, group=16)
    leaves, tree = jax.tree.flatten(drafter)
    assert len(leaves) == 3 * len(drafter.weights)  # levels, scale, minimum each
    assert jax.tree.unflatten(tree, leaves).weights.keys() == drafter.weights.keys()
    assert jax.tree.leaves(QuantSpec()) == []


def test_weights_of_another_model_are_a_clear_error():
    small = specdec.Model.random(tiny_config(vocab_size=64), seed=3, attention="xla")
    wide = specdec.Model.random(
        tiny_config(vocab_size=64, intermediate_size=256), seed=3, attention="xla"
    )
    drafter = QuantSpec.with_int4_weights(small, group=16)
    assert set(drafter.weights) == set(qw.expected_shapes(small.config))
    with pytest.raises(ValueError, match=r"layers.0.mlp.down is \(128, 64\), the target's is"):
        specdec.generate(wide, [[1, 2, 3]], max_new_tokens=4, drafter=drafter,
                         kv_cache=QuantKV(group=16, recent=16))  # fmt: skip
