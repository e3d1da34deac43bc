"""Exact verification of a draft tree against the target's distributions.

Walk down from the root. At the current accepted node u with target distribution p (temperature /
top-k / top-p applied by `specdec.sampling`), try u's children in their stored order with the rule
their `ChildKind` names:

  DETERMINISTIC (point-mass candidates; greedy, top-k trees, n-gram, SpecExec):
      accept x_i with prob p_i(x_i); on rejection p_{i+1} = norm(p_i with x_i zeroed).
  WITH_REPLACEMENT (siblings i.i.d. from q; SpecInfer multi-step speculative sampling):
      accept x_i with prob min(1, p_i(x_i) / q(x_i)); on rejection p_{i+1} = norm(max(p_i - q, 0)).
  WITHOUT_REPLACEMENT (distinct siblings; Gumbel-top-k / stochastic beam, RSD):
      accept x_i with prob min(1, p_i(x_i) / q_i(x_i)), q_i = q without x_1..x_{i-1}, renormalised;
      on rejection p_{i+1} = norm(max(p_i - q_i, 0)).

A single sampled child is the chain case (Leviathan et al. / Chen et al.). On acceptance the walk
moves to the child with that child's fresh target distribution; when a node's children are exhausted
(or it has none), the bonus token is drawn from the current residual p. Each rule keeps the emitted
tokens distributed exactly as the target's. At temperature 0, p is one-hot and every rule reduces to
"accept the child equal to the target argmax".
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from specdec.sampling import SamplingParams, probabilities, sample
from specdec.tree import ChildKind, DraftTree, ancestor_mask, sibling_links

UNROLL_MAX = 8  # walks of at most this many candidates are unrolled (chains of <= 8 drafts)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Verdict:
    """Outcome of verifying one tree per sequence."""

    path: (
        jax.Array
    )  # [B, T] int32: accepted nodes root-first; path[:, 0] = 0, valid up to num_accepted
    num_accepted: jax.Array  # [B] int32: accepted draft tokens (path length - 1)
    bonus: jax.Array  # [B] int32: token drawn after the last accepted node

    def emitted(self, tree: DraftTree) -> jax.Array:
        """int32 [B, T]: accepted drafts then the bonus; entries past num_accepted + 1 are junk."""
        nodes = tree.num_nodes
        shifted = jnp.concatenate([self.path[:, 1:], jnp.zeros_like(self.path[:, :1])], axis=1)
        tokens = jnp.take_along_axis(tree.tokens, shifted, axis=1)  # [B, T]
        at_bonus = jnp.arange(nodes)[None, :] == self.num_accepted[:, None]
        return jnp.where(at_bonus, self.bonus[:, None], tokens)


def _normalized(x: jax.Array, fallback: jax.Array) -> jax.Array:
    total = jnp.sum(x)
    # A residual with no mass can only arise from rounding (rejection had probability ~0): keep p.
    return jnp.where(total > 0, x / jnp.where(total > 0, total, 1.0), fallback)


def _verify_one(tokens, valid, kinds, draft_probs, probs, first_child, next_sibling, draws):
    """Verification walk for one sequence. Shapes: [T] / [T, V]; returns (path [T], n, the
    residual p [V] the bonus is drawn from).

    probs [T, V] holds each node's fresh target distribution (`probabilities` of its logits).

    The walk tries at most T - 1 candidates: every candidate is a child or a later sibling of the
    one before, so candidate indices strictly increase (topological order). It therefore runs a
    loop of exactly T - 1 iterations that carries a `live` flag (candidate >= 0) and leaves the
    state untouched once the walk has ended. A static trip count matters on GPU: XLA runs a
    `while_loop` whose trip count it cannot prove by copying the predicate to the host and
    waiting for it every iteration; a known trip count runs without that round trip. Every live
    iteration computes exactly what the data-dependent walk computed, with the same uniform draw
    (keyed by the number of candidates tried before), so verdicts are bit-identical to it
    (`verify_reference` at the bottom of this module).
    """
    nodes, vocab = probs.shape
    # draws [T]: u for the i-th candidate tried, drawn up front (`_walk_uniforms`: the same
    # draws the walk made one by one).
    # Without draft distributions q is identically zero (and no sampled child is ever usable).
    has_q = draft_probs is not None
    zeros = jnp.zeros((vocab,), jnp.float32)

    init = dict(
        node=jnp.int32(0),  # current accepted node u
        candidate=first_child[0],  # child of u being tried, -1 when exhausted
        p=probs[0],  # residual target distribution at u
        q=draft_probs[0] if has_q else zeros,  # residual draft distribution at u
        path=jnp.zeros((nodes,), jnp.int32),
        n=jnp.int32(0),
        step=jnp.int32(0),  # candidates tried so far
    )

    def body(_, s):
        live = s["candidate"] >= 0
        j = jnp.maximum(s["candidate"], 0)
        x = tokens[j]
        kind = kinds[s["node"]]
        p, q = s["p"], s["q"]
        sampled = kind != ChildKind.DETERMINISTIC
        # A sampled child with q(x) = 0 cannot have been drawn: treat it as absent.
        usable = valid[j] & (~sampled | (q[x] > 0))
        ratio = p[x] / jnp.where(q[x] > 0, q[x], 1.0)
        accept_prob = jnp.where(sampled, jnp.minimum(1.0, ratio), p[x])
        accept = live & usable & (draws[s["step"]] < accept_prob)

        # One residual, then one normalisation: selecting before normalising gives the same
        # values as normalising both candidates and selecting after, at half the vocab passes.
        residual = jnp.where(sampled, jnp.maximum(p - q, 0.0), p.at[x].set(0.0))
        p_if_rejected = _normalized(residual, p)
        p_next = jnp.where(accept, probs[j], jnp.where(live & usable, p_if_rejected, p))
        if has_q:
            without = kind == ChildKind.WITHOUT_REPLACEMENT
            q_if_rejected = jnp.where(without, _normalized(q.at[x].set(0.0), q), q)
            q_next = jnp.where(accept, draft_probs[j], jnp.where(live & usable, q_if_rejected, q))
        else:
            q_next = q
        return dict(
            node=jnp.where(accept, j, s["node"]),
            candidate=jnp.where(
                live, jnp.where(accept, first_child[j], next_sibling[j]), s["candidate"]
            ),
            p=p_next,
            q=q_next,
            path=jnp.where(accept, s["path"].at[s["n"] + 1].set(j), s["path"]),
            n=s["n"] + accept.astype(jnp.int32),
            step=s["step"] + live.astype(jnp.int32),
        )

    # Short walks (chains) unroll fully so XLA can fuse across candidates.
    trips = nodes - 1
    final = jax.lax.fori_loop(0, trips, body, init, unroll=trips <= UNROLL_MAX) if trips else init
    return final["path"], final["n"], final["p"]


def _verify_path(tokens, valid, kinds, draft_probs, probs, first_child, draws):
    """The walk of `_verify_one` for a tree that is a path (no node has two valid children),
    without a loop: the same verdict, bit for bit.

    On a path the walk accepts candidates until its first failure and then ends (no sibling is
    left to try), so the k-th candidate is tried at step k - 1 against its parent's fresh
    distribution, every acceptance test is one gathered scalar, and only the node where the walk
    stopped needs a vocabulary-wide residual (when its child was usable and rejected).
    """
    nodes, vocab = probs.shape
    draws = draws[: nodes - 1]  # [T - 1]: the k-th candidate is tried at step k - 1
    chain = [jnp.int32(0)]  # the path's nodes root-first, -1 past its end
    for _ in range(nodes - 1):
        chain.append(jnp.where(chain[-1] >= 0, first_child[jnp.maximum(chain[-1], 0)], -1))
    chain = jnp.stack(chain)  # [T]
    live = chain[1:] >= 0  # [T - 1]: the k-th candidate exists
    u, j = jnp.maximum(chain[:-1], 0), jnp.maximum(chain[1:], 0)  # [T - 1] parent, candidate
    x = tokens[j]
    sampled = kinds[u] != ChildKind.DETERMINISTIC
    px = probs[u, x]
    qx = draft_probs[u, x] if draft_probs is not None else jnp.zeros_like(px)
    usable = valid[j] & (~sampled | (qx > 0))
    ratio = px / jnp.where(qx > 0, qx, 1.0)
    accept_prob = jnp.where(sampled, jnp.minimum(1.0, ratio), px)
    accept = live & usable & (draws < accept_prob)
    n = jnp.sum(jnp.cumprod(accept.astype(jnp.int32)))  # accepted before the first failure
    path = jnp.where(jnp.arange(nodes) <= n, chain, 0)

    # The residual at the node the walk stopped on, if it rejected a usable child there.
    last = chain[n]
    tried = jnp.minimum(n, nodes - 2)  # the failed candidate's index in the [T - 1] arrays
    rejected = (n < nodes - 1) & live[tried] & usable[tried]
    p = probs[last]
    q = draft_probs[last] if draft_probs is not None else jnp.zeros((vocab,), jnp.float32)
    residual = jnp.where(sampled[tried], jnp.maximum(p - q, 0.0), p.at[x[tried]].set(0.0))
    p = jnp.where(rejected, _normalized(residual, p), p)
    return path, n, p


def _accepted_path(taken, reach, valid):
    """(path [T], n) from taken [T] (node j is its parent's accepted child) and reach [T, T]: a
    node is on the accepted path iff every non-root node from the root to it was taken; the
    path lists them root-first (ancestors have lower indices), zeros past its n + 1 nodes."""
    nodes = taken.shape[0]
    idx = jnp.arange(nodes)
    on_path = jnp.all(~reach | (taken | (idx == 0))[None, :], axis=1) & valid  # [T]
    on_path = on_path.at[0].set(True)
    n = jnp.sum(on_path.astype(jnp.int32)) - 1
    path = jnp.sort(jnp.where(on_path, idx, nodes))
    return jnp.where(path < nodes, path, 0).astype(jnp.int32), n


def _point_mass_accept_probs(px, before):
    """P(accept candidate j | it is tried) for point-mass children: p_j(x_j) = p(x_j) / (1 - S_j),
    S_j = the mass of the earlier distinct siblings (all rejected before j is tried)."""
    left = 1.0 - before
    return jnp.where(left > 0, px / jnp.where(left > 0, left, 1.0), 0.0)


def _verify_point_masses(tokens, valid, parents, reach, probs, draws):
    """The walk for a tree whose children are all point masses (DETERMINISTIC), without a loop:
    the same law as `_verify_one`, one uniform per node instead of per step.

    Shapes: tokens / valid / parents [T], reach [T, T] (ancestor-or-self mask), probs [T, V].
    Candidate j is tried at most once per walk (candidate indices strictly increase), and only
    after every earlier sibling was rejected, so its acceptance test can be drawn up front, with
    its own uniform: accept with p(x_j) / (1 - S_j) (the renormalised residual of the sequential
    rule). The walk then moves from each node to its first accepted child; a node is on the
    accepted path iff every non-root node from the root to it is its parent's first accepted
    child. Where the path ends every child was tried and rejected, so the bonus comes from that
    node's p with all its children's tokens removed. Every step is a [T] or [T, T] array
    operation: no per-candidate vocabulary-wide pass (the loop's cost grows with T; at 1024
    nodes it dominated the step). A token repeated among siblings is tried once (the sequential
    rule gives its later copies probability 0).
    """
    nodes, vocab = probs.shape
    idx = jnp.arange(nodes)
    candidate = valid & (parents >= 0) & (idx > 0)  # [T]
    px = probs[jnp.maximum(parents, 0), tokens]  # [T] p at each candidate's parent
    siblings = (parents[:, None] == parents[None, :]) & candidate[:, None] & candidate[None, :]
    earlier = siblings & (idx[None, :] < idx[:, None])  # [T, T]: k is an earlier sibling of j
    repeated = jnp.any(earlier & (tokens[None, :] == tokens[:, None]), axis=1)  # [T]
    usable = candidate & ~repeated
    before = jnp.sum(jnp.where(earlier & usable[None, :], px[None, :], 0.0), axis=1)  # [T] S_j
    accept = usable & (draws < _point_mass_accept_probs(px, before))  # [T], draws [T] per node
    # first accepted child of each node (T if none), then: is j its parent's first accepted child
    child_of = (parents[None, :] == idx[:, None]) & accept[None, :]  # [T parent, T child]
    first = jnp.min(jnp.where(child_of, idx[None, :], nodes), axis=1)  # [T]
    path, n = _accepted_path(accept & (first[jnp.maximum(parents, 0)] == idx), reach, valid)
    last = path[n]
    removed = jnp.zeros((vocab,), bool).at[tokens].max(usable & (parents == last))  # [V]
    p = probs[last]
    return path, n, _normalized(jnp.where(removed, 0.0, p), p)


def _accept_probs(px, qx, sampled):
    """P(accept a usable candidate x): min(1, p(x) / q(x)) if drawn from q, else p(x)."""
    return jnp.where(sampled, jnp.minimum(1.0, px / jnp.where(qx > 0, qx, 1.0)), px)


def _verify_by_node(tokens, valid, kinds, draft_probs, parents, reach, probs, draws, max_children):
    """The walk for any tree whose nodes have at most `max_children` children, in that many
    rounds over all nodes at once: the same law as `_verify_one`, one uniform per node.

    Shapes: tokens / valid / kinds / parents [T], draft_probs [T, V] or None, reach [T, T],
    probs [T, V]. When the walk reaches node u, what happens there depends only on u: it tries
    u's children in order against u's fresh p and q, with the residual updates of the module
    docstring, until one is accepted or none is left. So every node's sibling sequence is run
    up front, all nodes together, round r trying each node's r-th child ([T, V] work per round,
    max_children rounds instead of T - 1 one-candidate iterations); each candidate is tried once,
    with its own uniform. The accepted path is then the chain of accepted children from the root
    (as in `_verify_point_masses`), and the bonus comes from the residual p left at its end.
    Children past `max_children` would never be tried: the verdict stays exact (as if they were
    not drafted), only less is accepted.
    """
    nodes, vocab = probs.shape
    idx = jnp.arange(nodes)
    candidate = valid & (parents >= 0) & (idx > 0)  # [T]
    siblings = (parents[:, None] == parents[None, :]) & candidate[:, None] & candidate[None, :]
    rank = jnp.sum(siblings & (idx[None, :] < idx[:, None]), axis=1)  # [T] among valid siblings
    slot = jnp.where(candidate & (rank < max_children), rank, max_children)  # past the end: drop
    child_at = (
        jnp.full((nodes, max_children), -1, jnp.int32)
        .at[jnp.where(candidate, parents, nodes), slot]
        .set(idx.astype(jnp.int32), mode="drop")
    )  # [T, R]: node u's r-th child, -1 if none
    sampled = kinds != ChildKind.DETERMINISTIC  # [T] per parent
    without = kinds == ChildKind.WITHOUT_REPLACEMENT
    rows_normalized = lambda x, fallback: jax.vmap(_normalized)(x, fallback)
    p = probs  # [T, V] each node's residual target distribution
    q = draft_probs if draft_probs is not None else jnp.zeros_like(probs)  # [T, V]
    chosen = jnp.full((nodes,), -1, jnp.int32)  # [T] the accepted child of each node
    for r in range(max_children):
        j = child_at[:, r]  # [T]
        live = (j >= 0) & (chosen < 0)
        jj = jnp.maximum(j, 0)
        x = tokens[jj]  # [T]
        px, qx = p[idx, x], q[idx, x]  # [T]
        usable = live & (~sampled | (qx > 0))
        accept = usable & (draws[jj] < _accept_probs(px, qx, sampled))
        rejected = (usable & ~accept)[:, None]  # [T, 1]
        is_x = jnp.arange(vocab)[None, :] == x[:, None]  # [T, V]
        residual = jnp.where(sampled[:, None], jnp.maximum(p - q, 0.0), jnp.where(is_x, 0.0, p))
        p = jnp.where(rejected, rows_normalized(residual, p), p)
        if draft_probs is not None:
            q_rejected = rows_normalized(jnp.where(is_x, 0.0, q), q)
            q = jnp.where(rejected & without[:, None], q_rejected, q)
        chosen = jnp.where(accept, j, chosen)
    path, n = _accepted_path(candidate & (chosen[jnp.maximum(parents, 0)] == idx), reach, valid)
    return path, n, p[path[n]]


def verify(
    tree: DraftTree,
    logits: jax.Array,
    params: SamplingParams,
    key: jax.Array,
    *,
    path_only: bool = False,
    point_masses: bool = False,
    max_children: int | None = None,
) -> Verdict:
    """Verify each sequence's tree against target logits [B, T, V] (float32, one row per node).

    path_only: the caller guarantees that no node has two valid children (chains); the walk
    then runs without a loop (`_verify_path`), with the same verdicts. A tree with siblings
    under path_only=True is verified as if only each node's first child existed.
    point_masses: the caller guarantees that every node's children are DETERMINISTIC (a policy
    with children="top"); the walk then runs without a loop (`_verify_point_masses`): the same
    law with its own draws, so verdicts equal the loop's at temperature 0 and in distribution
    otherwise. path_only takes precedence.
    max_children: a static bound on any node's children (the policy's); other trees are then
    walked in that many rounds over all nodes (`_verify_by_node`, the same law with its own
    draws) instead of one candidate per iteration.
    """
    keys = jax.random.split(key, tree.tokens.shape[0])
    # Every node's target distribution in one batched pass: one `probabilities` call per step
    # instead of one per walk iteration (its `lax.cond`s each wait for the host on GPU unless
    # XLA captures them in a command buffer). Costs a [B, T, V] float32 buffer beside the logits.
    probs = probabilities(logits, params)  # [B, T, V]
    nodes, greedy = tree.num_nodes, params.mode == "greedy"
    draws = _walk_uniforms(keys, nodes, greedy)  # [B, T]
    if path_only and nodes > 1:
        first_child, _ = sibling_links(tree.parents, tree.valid)
        path, n, p = jax.vmap(_verify_path)(
            tree.tokens, tree.valid, tree.child_kind, tree.draft_probs, probs, first_child, draws
        )
    elif point_masses and nodes > 1:
        reach = ancestor_mask(tree.parents, tree.valid)  # [B, T, T]
        path, n, p = jax.vmap(_verify_point_masses)(
            tree.tokens, tree.valid, tree.parents, reach, probs, draws
        )
    elif max_children is not None and nodes > 1:
        reach = ancestor_mask(tree.parents, tree.valid)  # [B, T, T]
        walk = functools.partial(_verify_by_node, max_children=max(1, max_children))
        path, n, p = jax.vmap(walk)(
            tree.tokens, tree.valid, tree.child_kind, tree.draft_probs, tree.parents, reach,
            probs, draws,
        )  # fmt: skip
    else:
        first_child, next_sibling = sibling_links(tree.parents, tree.valid)
        path, n, p = jax.vmap(_verify_one)(
            tree.tokens, tree.valid, tree.child_kind, tree.draft_probs, probs, first_child,
            next_sibling, draws,
        )  # fmt: skip
    return Verdict(path=path, num_accepted=n, bonus=_bonus(keys, p, greedy))


def _walk_uniforms(keys: jax.Array, nodes: int, greedy: bool) -> jax.Array:
    """float32 [B, T]: u[b, i] = U(fold_in(first half of row b's key, i)), the walks' acceptance
    draws (the i-th candidate tried, or node i, depending on the walk). Greedy, every acceptance
    probability is exactly 0 or 1 (p is one-hot), so any u in [0, 1) gives the same verdicts:
    zeros, without generating random bits every step."""
    if greedy:
        return jnp.zeros((keys.shape[0], nodes), jnp.float32)
    uniforms = lambda k: jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(k, i)))(
        jnp.arange(nodes)
    )
    return jax.vmap(lambda k: uniforms(jax.random.split(k)[0]))(keys)


def _bonus(keys: jax.Array, p: jax.Array, greedy: bool) -> jax.Array:
    """int32 [B]: the bonus token of each row from the residual p [B, V] where its walk ended,
    drawn with the second half of the row's key (as `verify_reference` does). Greedy, p is
    one-hot (every residual of a one-hot p is itself or falls back to it), so its argmax is the
    draw, without the random bits and logarithms of a categorical over the vocabulary."""
    if greedy:
        return jnp.argmax(p, axis=-1).astype(jnp.int32)
    return jax.vmap(sample)(jax.vmap(lambda k: jax.random.split(k)[1])(keys), p)


# ---- reference ---------------------------------------------------------------------------------


def _verify_one_reference(
    tokens, valid, kinds, draft_probs, logits, first_child, next_sibling, params, key
):
    """The walk as a data-dependent while_loop, one candidate per trip (what `_verify_one` and
    `_verify_path` must equal bit for bit; on GPU each trip waits for the host)."""
    walk_key, bonus_key = jax.random.split(key)
    vocab = logits.shape[-1]
    q_of = lambda node: jnp.zeros(vocab, jnp.float32) if draft_probs is None else draft_probs[node]
    init = dict(
        node=jnp.int32(0),
        candidate=first_child[0],
        p=probabilities(logits[0], params),
        q=q_of(0),
        path=jnp.zeros((tokens.shape[0],), jnp.int32),
        n=jnp.int32(0),
        step=jnp.int32(0),
    )

    def body(s):
        j = s["candidate"]
        x = tokens[j]
        kind = kinds[s["node"]]
        p, q = s["p"], s["q"]
        sampled = kind != ChildKind.DETERMINISTIC
        usable = valid[j] & (~sampled | (q[x] > 0))
        ratio = p[x] / jnp.where(q[x] > 0, q[x], 1.0)
        accept_prob = jnp.where(sampled, jnp.minimum(1.0, ratio), p[x])
        u = jax.random.uniform(jax.random.fold_in(walk_key, s["step"]))
        accept = usable & (u < accept_prob)
        p_if_rejected = jnp.where(
            sampled, _normalized(jnp.maximum(p - q, 0.0), p), _normalized(p.at[x].set(0.0), p)
        )
        q_if_rejected = jnp.where(
            kind == ChildKind.WITHOUT_REPLACEMENT, _normalized(q.at[x].set(0.0), q), q
        )
        return dict(
            node=jnp.where(accept, j, s["node"]),
            candidate=jnp.where(accept, first_child[j], next_sibling[j]),
            p=jnp.where(
                accept, probabilities(logits[j], params), jnp.where(usable, p_if_rejected, p)
            ),
            q=jnp.where(accept, q_of(j), jnp.where(usable, q_if_rejected, q)),
            path=jnp.where(accept, s["path"].at[s["n"] + 1].set(j), s["path"]),
            n=s["n"] + accept.astype(jnp.int32),
            step=s["step"] + 1,
        )

    final = jax.lax.while_loop(lambda s: s["candidate"] >= 0, body, init)
    return final["path"], final["n"], sample(bonus_key, final["p"])


def verify_reference(
    tree: DraftTree,
    logits: jax.Array,
    params: SamplingParams,
    key: jax.Array,
    *,
    path_only: bool = False,  # accepted for a drop-in swap with `verify`; the walk needs no hint
    point_masses: bool = False,
    max_children: int | None = None,
) -> Verdict:
    """`verify` as the straightforward data-dependent walk (tests and benchmarks compare)."""
    del path_only, point_masses, max_children
    first_child, next_sibling = sibling_links(tree.parents, tree.valid)
    keys = jax.random.split(key, tree.tokens.shape[0])
    one = lambda t, v, c, q, lg, fc, ns, k: _verify_one_reference(t, v, c, q, lg, fc, ns, params, k)
    path, n, bonus = jax.vmap(one)(
        tree.tokens,
        tree.valid,
        tree.child_kind,
        tree.draft_probs,
        logits,
        first_child,
        next_sibling,
        keys,
    )
    return Verdict(path=path, num_accepted=n, bonus=bonus)
