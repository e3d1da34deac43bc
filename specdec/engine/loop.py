"""The decode loop: prefill, then draft -> verify -> commit until all sequences are done, ONE jit.

Plain autoregressive decoding is the same loop with a root-only tree (no drafter): one target
forward per step, zero drafts, the "bonus" token is the ordinary next token. So the speculative and
plain paths share prefill, sampling, cache handling and stopping by construction.

Per-sequence invariant, kept by every step: `history[b, :hist_len[b]]` holds prompt + generated
tokens; the last of them (the root) is not yet in the target cache, whose `lengths[b]` is
`hist_len[b] - 1`. A step commits exactly the tokens it emits (a block cut by EOS or
`max_new_tokens` commits only its emitted part). Finished sequences keep running in the batch but
commit nothing.

Drafters and policies enter only through `specdec.contract`; this module never changes for a new
drafter or policy.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from specdec.cache import Cache, Region
from specdec.contract import (
    DraftContext,
    Drafter,
    Policy,
    PrefillInputs,
    StepOutcome,
    TargetFeatures,
    VerifyReuse,
)
from specdec.model import Transformer
from specdec.models import Net
from specdec.sampling import SamplingParams, probabilities, sample
from specdec.tree import ChildKind, DraftTree, root_only
from specdec.verify import Verdict, verify


@dataclasses.dataclass(frozen=True)
class LoopShape:
    """The static sizes one compiled loop serves (buckets, so nearby requests share a compile)."""

    batch: int  # B
    prompt_len: int  # P: bucketed prompt length
    max_new: int  # N: bucketed maximum of new tokens
    capacity: int  # S: target cache slots
    tree_nodes: int  # T: tree capacity (1 without a drafter)
    tree_depth: int  # deepest draft depth (0 without a drafter)
    steps_per_sync: int = 1  # steps run between two checks of "is every sequence done?"

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
    cache: Cache  # target cache, lengths = hist_len - 1
    drafter_state: Any  # the drafter's own pytree (its cache, features, ...)
    policy_state: Any  # the policy's pytree kept across steps (() for most)
    key: jax.Array  # PRNG key
    steps: jax.Array  # [] int32 target forwards after prefill (batched)
    forwards: jax.Array  # [B] int32 steps during which the sequence was still active
    emit_hist: jax.Array  # [B, T] int32: emit_hist[b, n] = active steps that emitted n + 1 tokens
    accept_hist: jax.Array  # [B, T] int32: accept_hist[b, n] = active steps whose verdict
    #                         accepted n drafts (before any cut by EOS / max_new_tokens)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoopOutput:
    """What the compiled loop returns to the host."""

    history: jax.Array  # [B, Lh]
    num_generated: jax.Array  # [B]
    steps: jax.Array  # []
    forwards: jax.Array  # [B]
    emit_hist: jax.Array  # [B, T]
    accept_hist: jax.Array  # [B, T]
    # Returned (not used by the host) so the donated input caches alias these outputs in place.
    cache: Cache
    drafter_state: Any


def _is_stop(tokens: jax.Array, eos_ids: jax.Array) -> jax.Array:
    """bool, same shape as tokens: token is one of eos_ids ([E] int32, -1 = unused)."""
    return jnp.any((tokens[..., None] == eos_ids) & (eos_ids >= 0), axis=-1)


def _layers_wanted(drafter: Drafter | None) -> tuple[int, ...]:
    return tuple(drafter.target_layers) if drafter is not None else ()


def verify_forward(
    module: Transformer,
    tree: DraftTree,
    cache: Cache,
    reuse: VerifyReuse | None,
    taps: tuple[int, ...],
) -> tuple[jax.Array, Cache, tuple[jax.Array, ...]]:
    """The step's one target forward over the whole tree: (hidden [B, T, D], cache, taps).

    Node i goes to region slot i at RoPE position lengths + depth, under the ancestor mask. With
    `reuse`, layers [0, E) run only for the nodes the drafter did not (gathered into a block of
    `reuse.pending` nodes), then layers [E, L) run for the whole tree from the kept states.
    """
    mask = tree.ancestor_mask()  # [B, T, T]
    positions = cache.lengths[:, None] + tree.depths  # [B, T]
    if reuse is None:
        out = module(tree.tokens, positions, cache, Region.tree(mask), taps=taps)
        return out.hidden, out.cache, out.taps
    start = reuse.layer
    if any(t < start - 1 for t in taps):
        raise ValueError(f"target layers {taps} are not all computed when reusing {start} layers")
    nodes = tree.num_nodes
    # Nodes still to run through [0, E): not computed and valid, first; padding points past the
    # region (its writes are dropped, its rows see nothing of the tree and are discarded).
    todo = ~reuse.computed & tree.valid  # [B, T]
    order = jnp.argsort(~todo, axis=1, stable=True)[:, : reuse.pending].astype(jnp.int32)  # [B, U]
    live = jnp.take_along_axis(todo, order, axis=1)  # [B, U]
    far = cache.capacity  # a region offset that no slot can hold
    offsets = jnp.where(live, order, far)
    rows_mask = jnp.take_along_axis(mask, order[:, :, None], axis=1) & live[:, :, None]  # [B, U, T]
    x0 = module.embed_tokens(jnp.take_along_axis(tree.tokens, order, axis=1))  # [B, U, D]
    x0, cache, _ = module.run_layers(
        x0,
        jnp.take_along_axis(positions, order, axis=1),
        cache,
        Region(offsets=offsets, mask=rows_mask),
        stop=start,
    )
    rows = jnp.arange(tree.tokens.shape[0])[:, None]
    hidden = (
        reuse.hidden.astype(x0.dtype).at[rows, jnp.where(live, order, nodes)].set(x0, mode="drop")
    )  # [B, T, D]
    early = tuple(hidden for t in taps if t == start - 1)
    x, cache, later = module.run_layers(
        hidden,
        positions,
        cache,
        Region.tree(mask),
        start=start,
        taps=tuple(t for t in taps if t >= start),
    )
    return module.norm(x), cache, early + later


def prefill(
    target: Net,
    drafter: Drafter | None,
    cache: Cache,
    drafter_state: Any,
    prompt: jax.Array,  # [B, P] int32, right-padded
    prompt_lens: jax.Array,  # [B] int32
    params: SamplingParams,
    key: jax.Array,
):
    """Run the prompts, sample the first new token, let the drafter absorb the prompt.

    Returns (cache, drafter_state, first [B]).
    """
    module = target.module()
    taps = _layers_wanted(drafter)
    with jax.named_scope("prefill"):
        out = module.prefill(prompt, prompt_lens, cache, taps=taps)
        last = jnp.take_along_axis(out.hidden, (prompt_lens - 1)[:, None, None], axis=1)[:, 0]
        first = sample(key, probabilities(module.logits(last), params))  # [B]
    if drafter is not None:
        with jax.named_scope("draft_prefill"):
            inputs = PrefillInputs(
                target=target,
                prompt=prompt,
                prompt_lens=prompt_lens,
                first=first,
                features=TargetFeatures(hidden=out.hidden, layers=out.taps),
            )
            drafter_state = drafter.prefill(drafter_state, inputs)
    return out.cache, drafter_state, first


def walk_options(policy: Policy | None) -> dict:
    """verify's static options for `policy`'s trees: chains (`Policy.is_chain`) and trees of
    point-mass children are verified without a loop, trees with a known bound on children in
    that many rounds over all nodes."""
    return dict(
        path_only=policy is not None and policy.is_chain,
        point_masses=policy is not None and policy.child_kind == ChildKind.DETERMINISTIC,
        max_children=None if policy is None else policy.max_children,
    )


def commit_path(
    cache: Cache, tree: DraftTree, verdict: Verdict, count: jax.Array, policy: Policy | None
) -> Cache:
    """The cache with the first count[b] nodes of each accepted path appended to its prefix. A
    chain (plain decoding's root-only tree, `Policy.is_chain`) accepts nodes 0..n, whose K/V
    already sit in region slots 0..n: the lengths advance and nothing moves. Other trees move
    the accepted nodes' K/V next to the prefix (a gather + scatter per layer and buffer)."""
    if tree.num_nodes == 1 or policy.is_chain:  # plain decoding (no policy) has one node
        return cache.advance(count)
    # an accepted path has at most max_depth + 1 nodes: move only that many slots
    return cache.commit(verdict.path[:, : policy.max_depth + 1], count)


def step(
    target: Net,
    drafter: Drafter | None,
    policy: Policy | None,
    max_new: jax.Array,
    params: SamplingParams,
    eos_ids: jax.Array,
    s: LoopState,
) -> LoopState:
    """One draft -> verify -> commit step for every sequence (finished ones commit nothing)."""
    module = target.module()
    batch = s.hist_len.shape[0]
    rows = jnp.arange(batch)
    key, draft_key, verify_key = jax.random.split(s.key, 3)
    root = s.history[rows, s.hist_len - 1]  # [B]
    ctx = DraftContext(
        history=s.history,
        hist_len=s.hist_len,
        target=target,
        cache=s.cache,
        vocab_size=module.config.vocab_size,
    )

    drafter_state, cache, reuse = s.drafter_state, s.cache, None
    with jax.named_scope("draft"):
        if drafter is None:
            tree = root_only(root)
        else:
            carried = drafter.begin_step(drafter_state, ctx, policy)
            tree, carried = policy.build(
                drafter.expander(ctx, policy), carried, root, params, draft_key, s.policy_state
            )
            handoff = drafter.end_step(carried, ctx)
            drafter_state, cache, reuse = handoff.state, handoff.cache, handoff.reuse
            if reuse is not None and policy.renumbers_nodes:
                raise ValueError(
                    f"{type(drafter).__name__} hands its work on the tree to the verify forward, "
                    f"but {type(policy).__name__} renumbers the nodes it drafted; this pairing "
                    f"is not supported (for EarlyExit, pass reuse=False)"
                )

    with jax.named_scope("verify_forward"):
        taps = _layers_wanted(drafter)
        hidden, cache, tapped = verify_forward(module, tree, cache, reuse, taps)
        logits = module.logits(hidden)  # [B, T, V] float32
    with jax.named_scope("verify_walk"):
        verdict = verify(tree, logits, params, verify_key, **walk_options(policy))

    with jax.named_scope("commit"):
        active = ~s.done
        accepted = verdict.num_accepted
        # Emit accepted drafts + bonus, cut at the first EOS and at max_new.
        emitted = verdict.emitted(tree)  # [B, T]
        offsets = jnp.arange(tree.num_nodes)[None, :]
        stop = _is_stop(emitted, eos_ids) & (offsets <= accepted[:, None])
        has_stop = jnp.any(stop, axis=1)
        count = jnp.where(has_stop, jnp.argmax(stop, axis=1) + 1, accepted + 1)
        count = jnp.where(active, jnp.minimum(count, max_new - s.num_generated), 0)
        # The cache keeps the root and the emitted drafts; the last emitted token is the next
        # root. So exactly `count` path nodes are committed and lengths stays hist_len - 1.
        cache = commit_path(cache, tree, verdict, count, policy)
        dest = jnp.where(
            offsets < count[:, None], s.hist_len[:, None] + offsets, s.history.shape[1]
        )
        history = s.history.at[rows[:, None], dest].set(emitted, mode="drop")
        num_generated = s.num_generated + count

    policy_state = s.policy_state
    if drafter is not None:
        with jax.named_scope("observe"):
            outcome = StepOutcome(
                tree=tree,
                verdict=verdict,
                committed=count,
                features=TargetFeatures(hidden=hidden, layers=tapped),
            )
            drafter_state = drafter.observe(drafter_state, ctx, outcome)
            policy_state = policy.observe(policy_state, outcome)
    counted = active.astype(jnp.int32)
    return LoopState(
        history=history,
        hist_len=s.hist_len + count,
        num_generated=num_generated,
        done=s.done | (active & has_stop) | (num_generated >= max_new),
        cache=cache,
        drafter_state=drafter_state,
        policy_state=policy_state,
        key=key,
        steps=s.steps + jnp.any(active).astype(jnp.int32),  # steps after all are done: none
        forwards=s.forwards + counted,
        emit_hist=s.emit_hist.at[rows, jnp.maximum(count - 1, 0)].add(counted),
        accept_hist=s.accept_hist.at[rows, accepted].add(counted),
    )


def initial_state(
    target: Net,
    drafter: Drafter | None,
    cache: Cache,  # empty target cache
    drafter_state: Any,  # fresh drafter state
    prompt: jax.Array,  # [B, P] int32, right-padded
    prompt_lens: jax.Array,  # [B] int32
    max_new: jax.Array,  # [] int32
    params: SamplingParams,
    seed: jax.Array,  # [] int32
    eos_ids: jax.Array,  # [E] int32, -1 = unused
    *,
    policy: Policy | None,
    shape: LoopShape,
) -> LoopState:
    """Prefill and the state the first step starts from."""
    batch = shape.batch
    key, prefill_key = jax.random.split(jax.random.key(seed))
    cache, drafter_state, first = prefill(
        target, drafter, cache, drafter_state, prompt, prompt_lens, params, prefill_key
    )
    rows = jnp.arange(batch)
    history = jnp.zeros((batch, shape.history_len), jnp.int32).at[:, : shape.prompt_len].set(prompt)
    history = history.at[rows, prompt_lens].set(first)
    return LoopState(
        history=history,
        hist_len=prompt_lens + 1,
        num_generated=jnp.ones((batch,), jnp.int32),
        done=_is_stop(first, eos_ids) | (max_new <= 1),
        cache=cache,
        drafter_state=drafter_state,
        policy_state=policy.init_state(batch) if policy is not None else (),
        key=key,
        steps=jnp.int32(0),
        forwards=jnp.zeros((batch,), jnp.int32),
        emit_hist=jnp.zeros((batch, shape.tree_nodes), jnp.int32),
        accept_hist=jnp.zeros((batch, shape.tree_nodes), jnp.int32),
    )


def decode_loop(
    target: Net,
    drafter: Drafter | None,
    cache: Cache,  # empty target cache, donated
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
    state = initial_state(
        target,
        drafter,
        cache,
        drafter_state,
        prompt,
        prompt_lens,
        max_new,
        params,
        seed,
        eos_ids,
        policy=policy,
        shape=shape,
    )
    one_step = lambda s: step(target, drafter, policy, max_new, params, eos_ids, s)
    if shape.steps_per_sync > 1:
        # An inner loop of static trip count: a GPU runs it without reading a predicate back, so
        # the host waits once per `steps_per_sync` steps instead of every step. Steps after every
        # sequence is done commit nothing and are not counted (at most steps_per_sync - 1 of them).
        inner = lambda s: jax.lax.fori_loop(0, shape.steps_per_sync, lambda _, x: one_step(x), s)
    else:
        inner = one_step
    final = jax.lax.while_loop(lambda s: ~jnp.all(s.done), inner, state)
    return LoopOutput(
        history=final.history,
        num_generated=final.num_generated,
        steps=final.steps,
        forwards=final.forwards,
        emit_hist=final.emit_hist,
        accept_hist=final.accept_hist,
        cache=final.cache,
        drafter_state=final.drafter_state,
    )
