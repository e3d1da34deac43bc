"""Model invariants: full forward == incremental decode; tree block == HF tree forward."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specdec.cache import KVCache, Region
from specdec.tree import ancestor_mask


def _positions(batch, start, length):
    return jnp.broadcast_to(jnp.arange(start, start + length, dtype=jnp.int32), (batch, length))


def test_full_forward_equals_incremental_decoding(llama):
    module, cfg = llama.module(), llama.config
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, cfg.vocab_size)
    full = module.logits(module(tokens, _positions(2, 0, 12)).hidden)

    cache = KVCache.create(cfg.num_layers, 2, 32, cfg.num_kv_heads, cfg.head_dim, jnp.float32)
    out = module(tokens[:, :5], _positions(2, 0, 5), cache, Region.causal(2, 5), prefix=False)
    cache, steps = out.cache.advance(jnp.full((2,), 5)), [module.logits(out.hidden)]
    for t in range(5, 12):
        out = module(tokens[:, t : t + 1], _positions(2, t, 1), cache, Region.causal(2, 1))
        cache = out.cache.advance(jnp.ones((2,), jnp.int32))
        steps.append(module.logits(out.hidden))
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=2e-5)


def test_tree_block_matches_transformers_tree_forward(llama, fixtures_dir):
    """The fixture's HF forward of a 6-node tree under a 4-D mask with position = prefix + depth."""
    ref = np.load(fixtures_dir / "llama" / "reference.npz")
    module, cfg = llama.module(), llama.config
    prefix = jnp.asarray(ref["tree_prefix"])[None]
    parents = jnp.asarray(ref["tree_parents"], jnp.int32)[None]
    depth = np.zeros(6, np.int32)
    for i, p in enumerate(ref["tree_parents"]):
        depth[i] = 0 if p < 0 else depth[p] + 1
    cache = KVCache.create(cfg.num_layers, 1, 32, cfg.num_kv_heads, cfg.head_dim, jnp.float32)
    out = module(prefix, _positions(1, 0, 8), cache, Region.causal(1, 8), prefix=False)
    cache = out.cache.advance(jnp.array([8]))
    mask = ancestor_mask(parents, jnp.ones((1, 6), bool))
    out = module(
        jnp.asarray(ref["tree_tokens"])[None],
        8 + jnp.asarray(depth)[None],
        cache,
        Region.tree(mask),
    )
    np.testing.assert_allclose(
        np.asarray(module.logits(out.hidden))[0], ref["tree_logits"], atol=1e-4
    )


def test_ragged_prefill_matches_unpadded(llama):
    """Right-padded prompts in one batch give each sequence the logits it gets alone."""
    module, cfg = llama.module(), llama.config
    lengths = [3, 9]
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, cfg.vocab_size)
    cache = KVCache.create(cfg.num_layers, 2, 16, cfg.num_kv_heads, cfg.head_dim, jnp.float32)
    out = module(tokens, _positions(2, 0, 9), cache, Region.causal(2, 9), prefix=False)
    batched = module.logits(out.hidden)
    for b, n in enumerate(lengths):
        alone = module.logits(module(tokens[b : b + 1, :n], _positions(1, 0, n)).hidden)
        np.testing.assert_allclose(batched[b, :n], alone[0], atol=2e-5)


def test_causal_prefill_path_equals_the_masked_one(llama, monkeypatch):
    """A prefill whose region is `Region.causal` takes the causal flash path where cuDNN runs
    (faked here: causal_implementation says "cudnn", and causal_attention falls back to XLA on
    the CPU); the same mask without the flag goes through the masked path: same outputs and
    cache. The flag is static (part of the jit key), and replacing the mask must reset it."""
    from specdec import attention

    calls = []

    def spy(q, k, v):
        calls.append(q.shape)
        return causal_attention(q, k, v)

    causal_attention = attention.causal_attention
    monkeypatch.setattr(attention, "causal_implementation", lambda q, k: "cudnn")
    monkeypatch.setattr(attention, "causal_attention", spy)
    module, cfg = llama.module(), llama.config
    tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, cfg.vocab_size)
    cache = KVCache.create(cfg.num_layers, 2, 16, cfg.num_kv_heads, cfg.head_dim, jnp.float32)
    causal = Region.causal(2, 9)
    masked = causal.masked(causal.mask)  # the same mask, narrowed by nothing: not flagged
    assert causal.is_causal and not masked.is_causal
    assert jax.tree.leaves(causal) == [causal.offsets, causal.mask]  # the flag is not a leaf

    @jax.jit
    def run(region):
        out = module(tokens, _positions(2, 0, 9), cache, region, prefix=False)
        return out.hidden, out.cache.read(0).k

    h_mask, k_mask = run(masked)
    assert not calls
    h_fast, k_fast = run(causal)
    assert len(calls) == cfg.num_layers
    np.testing.assert_allclose(h_fast, h_mask, atol=2e-5)
    np.testing.assert_array_equal(k_fast, k_mask)


@pytest.mark.parametrize("batch", [1, 2])
def test_contiguous_regions_write_one_run_at_batch_one(batch):
    """Region.causal / tree declare their offsets 0 .. T - 1 (static; `masked` keeps it, a
    hand-built region does not). At batch 1 a contiguous write is one dynamic-update-slice
    instead of the indexed scatter (which XLA turns into an update plus a keep-or-drop select
    that reads the old slots back); it stores exactly what the scatter stores."""
    causal, tree = Region.causal(batch, 3), Region.tree(jnp.ones((batch, 3, 3), bool))
    built = Region(offsets=causal.offsets, mask=causal.mask)
    assert causal.contiguous and tree.contiguous and causal.masked(causal.mask).contiguous
    assert not built.contiguous
    assert jax.tree.leaves(tree) == [tree.offsets, tree.mask]  # the flag is not a leaf

    keys = jax.random.split(jax.random.key(0), 3)
    fill = lambda key: tuple(jax.random.normal(key, (2, batch, 16, 2, 4)))
    cache = KVCache.create(2, batch, 16, 2, 4, jnp.float32)
    cache = dataclasses.replace(cache, k=fill(keys[0]), v=fill(keys[1]))
    cache = cache.with_lengths(jnp.array([5, 9][:batch], jnp.int32))
    k_new = jax.random.normal(keys[2], (batch, 3, 2, 4))

    def write(c, contiguous):
        return c.write(1, k_new, -k_new, causal.offsets, contiguous=contiguous)

    for a, b in zip(
        jax.tree.leaves(write(cache, True)), jax.tree.leaves(write(cache, False)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    ops = str(jax.make_jaxpr(lambda c: write(c, True))(cache))
    assert ("dynamic_update_slice" in ops) == (batch == 1)
    assert ("scatter" in ops) == (batch != 1)


def test_split_backward_concatenates_the_pieces_gradients():
    """model.split's hand-written backward equals autodiff of plain slicing; bad sizes are named."""
    from specdec.model import split, split_qkv

    qkv = jax.random.normal(jax.random.key(0), (2, 3, 4, 5, 6))  # K = 4 groups of 3 q + k + v

    def weighted(q, k, v):
        return jnp.sum(q * 1.5) + jnp.sum(k * k) + jnp.sum(jnp.sin(v))

    def sliced(x):
        return weighted(x[:, :, :, :3].reshape(2, 3, 12, 6), x[:, :, :, 3], x[:, :, :, 4])

    got = jax.grad(lambda x: weighted(*split_qkv(x)))(qkv)
    np.testing.assert_array_equal(got, jax.grad(sliced)(qkv))
    with pytest.raises(ValueError, match=r"sizes \(2, 2\) do not sum to axis 3"):
        split(qkv, 3, (2, 2))
