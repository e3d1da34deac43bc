"""The decode loop: prefill, then draft -> verify -> commit until all sequences are done, ONE jit.

Plain autoregressive decoding is the same loop with a root-only tree (no drafter): one target
forward per step, zero drafts, the "bonus" token is the ordinary next token. So the speculative and
plain paths share prefill, sampling, cache handling and stopping by construction.

Per-sequence invariant, kept by every step: `history[b, :hist_len[b]]` holds prompt + generated
tokens; the last of them (the root) is not yet in the target cache, whose `lengths[b]` is
`hist_len[b] - 1`. Finished sequences keep running in the batch but commit nothing.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from drafters.base import DraftContext, Drafter
from specdec.cache import KVCache, Region
from specdec.models import Net
from specdec.sampling import SamplingParams, probabilities, sample
from specdec.verify import verify
from trees.policy import Policy
from trees.tree import root_only


@dataclasses.dataclass(frozen=True)
class LoopShape:
    """The static sizes one compiled loop serves (buckets, so nearby requests share a compile)."""

    batch: int  # B
    prompt_len: int  # P: bucketed prompt length
    max_new: int  # N: bucketed maximum of new tokens
    capacity: int  # S: target cache slots
    tree_nodes: int  # T: tree capacity (1 without a drafter)

    @property
    def history_len(self) -> int:
        # Room for P + N tokens plus one step's overshoot, which the scatter drops anyway.
        return self.prompt_len + self.max_new + self.tree_nodes


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoopState:
    """Everything the while_loop carries."""

    history: jax.Array  # [B, Lh] int32 prompt + generated tokens
    hist_len: jax.Array  # [B] int32
    num_generated: jax.Array  # [B] int32 new tokens so far (first one comes from prefill)
    done: jax.Array  # [B] bool
    cache: KVCache  # target cache, lengths = hist_len - 1
    drafter_state: Any  # the drafter's own pytree (its cache, features, ...)
    key: jax.Array  # PRNG key
    steps: jax.Array  # [] int32 target forwards after prefill (batched)
    forwards: jax.Array  # [B] int32 steps during which the sequence was still active
    accept_hist: jax.Array  # [B, T] int32: accept_hist[b, n] = active steps that accepted n drafts


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoopOutput:
    """What the compiled loop returns to the host."""

    history: jax.Array  # [B, Lh]
    num_generated: jax.Array  # [B]
    steps: jax.Array  # []
    forwards: jax.Array  # [B]
    accept_hist: jax.Array  # [B, T]
    # Returned (not used by the host) so the donated input caches alias these outputs in place.
    cache: KVCache
    drafter_state: Any


def _is_stop(tokens: jax.Array, eos_ids: jax.Array) -> jax.Array:
    """bool, same shape as tokens: token is one of eos_ids ([E] int32, -1 = unused)."""
    return jnp.any((tokens[..., None] == eos_ids) & (eos_ids >= 0), axis=-1)


def _prefill(target: Net, cache: KVCache, prompt, prompt_lens, params, key):
    """Run the prompts, sample the first new token. Returns (cache, first_token [B])."""
    module = target.module()
    out = module.prefill(prompt, prompt_lens, cache)
    last = jnp.take_along_axis(out.hidden, (prompt_lens - 1)[:, None, None], axis=1)[:, 0]  # [B, D]
    first = sample(key, probabilities(module.logits(last), params))
    return out.cache, first


def _step(
    target: Net,
    drafter: Drafter | None,
    policy: Policy | None,
    max_new,
    params,
    eos_ids,
    s: LoopState,
) -> LoopState:
    module = target.module()
    batch = s.hist_len.shape[0]
    rows = jnp.arange(batch)
    key, draft_key, verify_key = jax.random.split(s.key, 3)
    root = s.history[rows, s.hist_len - 1]  # [B]
    ctx = DraftContext(history=s.history, hist_len=s.hist_len, vocab_size=module.config.vocab_size)

    drafter_state = s.drafter_state
    if drafter is None:
        tree = root_only(root)
    else:
        tree, drafter_state = policy.build(
            drafter.expander(ctx, policy), drafter_state, root, params, draft_key
        )

    # One target forward over the whole tree: node i at slot lengths + i, position lengths + depth.
    positions = s.cache.lengths[:, None] + tree.depths
    out = module(tree.tokens, positions, s.cache, Region.tree(tree.ancestor_mask()))
    verdict = verify(tree, module.logits(out.hidden), params, verify_key)

    active = ~s.done
    accepted = verdict.num_accepted
    cache = out.cache.commit(verdict.path, jnp.where(active, accepted + 1, 0))

    # Emit accepted drafts + bonus, cut at the first EOS and at max_new.
    emitted = verdict.emitted(tree)  # [B, T]
    offsets = jnp.arange(tree.num_nodes)[None, :]
    stop = _is_stop(emitted, eos_ids) & (offsets <= accepted[:, None])
    has_stop = jnp.any(stop, axis=1)
    count = jnp.where(has_stop, jnp.argmax(stop, axis=1) + 1, accepted + 1)
    count = jnp.where(active, jnp.minimum(count, max_new - s.num_generated), 0)
    dest = jnp.where(offsets < count[:, None], s.hist_len[:, None] + offsets, s.history.shape[1])
    history = s.history.at[rows[:, None], dest].set(emitted, mode="drop")
    num_generated = s.num_generated + count

    if drafter is not None:
        drafter_state = drafter.observe(drafter_state, ctx, tree, verdict)
    return LoopState(
        history=history,
        hist_len=s.hist_len + count,
        num_generated=num_generated,
        done=s.done | (active & has_stop) | (num_generated >= max_new),
        cache=cache,
        drafter_state=drafter_state,
        key=key,
        steps=s.steps + 1,
        forwards=s.forwards + active.astype(jnp.int32),
        accept_hist=s.accept_hist.at[rows, accepted].add(active.astype(jnp.int32)),
    )


def decode_loop(
    target: Net,
    drafter: Drafter | None,
    cache: KVCache,  # empty target cache, donated
    drafter_state: Any,  # fresh drafter state, donated
    prompt: jax.Array,  # [B, P] int32, right-padded
    prompt_lens: jax.Array,  # [B] int32
    max_new: jax.Array,  # [] int32
    params: SamplingParams,
    seed: jax.Array,  # [] int32
    eos_ids: jax.Array,  # [E] int32, -1 = unused
    *,
    policy: Policy | None,
    shape: LoopShape,
) -> LoopOutput:
    """Generate up to max_new tokens per sequence (plain decoding when drafter is None).

    Jit with `policy` and `shape` static.
    """
    batch = shape.batch
    key, prefill_key = jax.random.split(jax.random.key(seed))
    cache, first = _prefill(target, cache, prompt, prompt_lens, params, prefill_key)
    if drafter is not None:
        drafter_state = drafter.prefill(drafter_state, prompt, prompt_lens)

    rows = jnp.arange(batch)
    history = jnp.zeros((batch, shape.history_len), jnp.int32).at[:, : shape.prompt_len].set(prompt)
    history = history.at[rows, prompt_lens].set(first)
    state = LoopState(
        history=history,
        hist_len=prompt_lens + 1,
        num_generated=jnp.ones((batch,), jnp.int32),
        done=_is_stop(first, eos_ids) | (max_new <= 1),
        cache=cache,
        drafter_state=drafter_state,
        key=key,
        steps=jnp.int32(0),
        forwards=jnp.zeros((batch,), jnp.int32),
        accept_hist=jnp.zeros((batch, shape.tree_nodes), jnp.int32),
    )
    step = lambda s: _step(target, drafter, policy, max_new, params, eos_ids, s)
    final = jax.lax.while_loop(lambda s: ~jnp.all(s.done), step, state)
    return LoopOutput(
        history=final.history,
        num_generated=final.num_generated,
        steps=final.steps,
        forwards=final.forwards,
        accept_hist=final.accept_hist,
        cache=final.cache,
        drafter_state=final.drafter_state,
    )
