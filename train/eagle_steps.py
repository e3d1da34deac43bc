"""Pure EAGLE training functions: the head's training forward, training-time test, the losses.

Dimension letters: B batch, L head positions (a row holds L + 1 tokens), D model width, N/K
query/KV heads, G = N / K, H head dim, V target vocabulary, Vd draft vocabulary, X fused taps,
S keys.

A row of L + 1 tokens runs through the frozen target once (no cache, causal), giving features
f_0..f_L and distributions p_0..p_L (p_j: the target's next-token distribution after token j).
Head index t reads [emb(token t+1) ; feature t] and predicts feature t+1, whose logits are scored
against p_{t+1} (the distribution of token t+2). Training-time test (EAGLE-3) unrolls k = 0..K-1:
at step k index t stands for position t + k: it reads token t+k+1, the head's own step-(k-1)
output at index t as its feature, RoPE position t + k, and is scored against p_{t+k+1}. Its query
sees step 0's keys at indices <= t (causal) and, of each later step j = 1..k, only index t's key
(`ttt_mask` draws it): together exactly the positions 0..t+k, as when drafting a chain.

Weights: a position counts where the stream's loss mask says the target distribution there
predicts an assistant token (`train.eagle_data.assistant_mask`), and (EAGLE-3) where the target's
argmax lies in the draft vocabulary; padding beyond the row (t + k + 1 > L) counts nothing.
"""

import dataclasses

import jax
import jax.numpy as jnp

from drafters.eagle import EagleHead, fuse, head_forward
from specdec.attention import causal_attention
from specdec.model import Transformer


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """What the losses need to know (static under jit)."""

    version: int  # 1: EAGLE-1/2 (regression + 0.1 CE); 3: EAGLE-3 (training-time test)
    ttt_steps: int  # K unrolled steps (EAGLE-3); EAGLE-1 uses 1
    target_layers: tuple[int, ...]  # EAGLE-3's taps; () for EAGLE-1
    feature_weight: float = 1.0  # EAGLE-1: smooth-L1 feature regression
    ce_weight: float = 0.1  # EAGLE-1: soft cross-entropy (EAGLE-3's CE has weight 1 per step)
    step_decay: float = 0.8  # EAGLE-3: step k's loss weighs step_decay**k
    noise: float = 0.2  # EAGLE-1: uniform feature noise of width noise * 512 / L (the reference)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Terms:
    """Summed loss terms of a batch, so batches (and devices) add up before normalising."""

    ce: jax.Array  # f32 [K] weighted soft cross-entropy per step
    weight: jax.Array  # f32 [K] weights per step (positions that count)
    hits: jax.Array  # f32 [K] assistant positions where draft argmax == target argmax
    scored: jax.Array  # f32 [K] assistant positions scored for `hits` (vocab mask not applied)
    feature: jax.Array  # f32 [] weighted smooth-L1 sum (EAGLE-1; 0 for EAGLE-3)

    def __add__(self, other: "Terms") -> "Terms":
        return jax.tree.map(jnp.add, self, other)

    def loss(self, spec: LossSpec) -> jax.Array:
        """The training objective (f32 []): EAGLE-1 w_f * L1 + w_ce * CE; EAGLE-3 sum 0.8^k CE_k."""
        ce = self.ce / jnp.maximum(self.weight, 1.0)  # [K]
        if spec.version == 1:
            feature = self.feature / jnp.maximum(self.weight[0], 1.0)
            return spec.feature_weight * feature + spec.ce_weight * ce[0]
        decay = spec.step_decay ** jnp.arange(ce.shape[0], dtype=jnp.float32)
        return jnp.sum(decay * ce)

    def metrics(self, spec: LossSpec) -> dict[str, jax.Array]:
        return {
            "loss": self.loss(spec),
            "ce": self.ce / jnp.maximum(self.weight, 1.0),  # [K]
            "acc": self.hits / jnp.maximum(self.scored, 1.0),  # [K] top-1 agreement
            "feature": self.feature / jnp.maximum(self.weight[0], 1.0),
        }


# ---- training-time test attention ----------------------------------------------------------


def ttt_mask(length: int, step: int) -> jax.Array:
    """bool [L, (step + 1) * L]: what step `step`'s queries see of the keys of steps 0..step,
    laid out step after step: step 0 causally, each later step only the query's own index."""
    causal = jnp.tril(jnp.ones((length, length), bool))
    eye = jnp.eye(length, dtype=bool)
    return jnp.concatenate([causal] + [eye] * step, axis=1)


def ttt_attention(
    q: jax.Array,  # [B, L, N, H] this step's queries
    keys: tuple[jax.Array, ...],  # step 0..k keys, each [B, L, K, H]
    values: tuple[jax.Array, ...],  # step 0..k values, each [B, L, K, H]
) -> jax.Array:  # [B, L, N, H]
    """Attention under `ttt_mask` without materialising it: the causal [L, L] block plus one
    diagonal score per later step, merged in one softmax (memory O(L^2 + kL), not O(kL^2))."""
    if len(keys) == 1:
        return causal_attention(q, keys[0], values[0])
    later_k = jnp.stack(keys[1:], axis=-2)  # [B, L, K, J, H]
    later_v = jnp.stack(values[1:], axis=-2)
    valid = jnp.ones((len(keys) - 1,), bool)
    return diagonal_attention(q, keys[0], values[0], later_k, later_v, valid)


def diagonal_attention(
    q: jax.Array,  # [B, L, N, H]
    k0: jax.Array,  # [B, L, K, H] step 0's keys (seen causally)
    v0: jax.Array,  # [B, L, K, H]
    later_k: jax.Array,  # [B, L, K, J, H] keys of steps 1..J (each seen at the query's index)
    later_v: jax.Array,  # [B, L, K, J, H]
    valid: jax.Array,  # [J] bool: which of the J later steps exist yet (the rest are ignored)
) -> jax.Array:  # [B, L, N, H]
    """`ttt_attention` over a fixed-size buffer of later steps, so a scan over steps keeps one
    shape: the causal block of step 0 and the valid diagonal scores, in one softmax."""
    batch, length, heads, dim = q.shape
    kv_heads = k0.shape[2]
    qg = q.astype(jnp.float32).reshape(batch, length, kv_heads, heads // kv_heads, dim)
    qg = qg * dim**-0.5  # [B, L, K, G, H]
    f32 = lambda x: x.astype(jnp.float32)
    causal = jnp.einsum("BTKGH,BSKH->BKGTS", qg, f32(k0))  # [B, K, G, L, L]
    causal = jnp.where(jnp.tril(jnp.ones((length, length), bool)), causal, -jnp.inf)
    diagonal = jnp.einsum("BTKGH,BTKJH->BKGTJ", qg, f32(later_k))  # [B, K, G, L, J]
    diagonal = jnp.where(valid, diagonal, -jnp.inf)
    probs = jax.nn.softmax(jnp.concatenate([causal, diagonal], axis=-1), axis=-1)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs[..., :length], f32(v0))
    out = out + jnp.einsum("BKGTJ,BTKJH->BTKGH", probs[..., length:], f32(later_v))
    return out.reshape(batch, length, heads, dim).astype(q.dtype)


# ---- forward passes --------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TargetOutputs:
    """The frozen target's view of a row (no gradient flows into it)."""

    hidden: jax.Array  # [B, L+1, D] after the final norm (EAGLE-1's feature)
    taps: tuple[jax.Array, ...]  # X x [B, L+1, D] residual stream after each tapped layer
    logits: jax.Array  # [B, L+1, V] f32


def run_target(target: Transformer, tokens: jax.Array, taps: tuple[int, ...]) -> TargetOutputs:
    """One causal forward of the frozen target over tokens [B, L+1], inside the training step."""
    batch, length = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    out = target(tokens, positions, taps=taps)
    logits = target.logits(out.hidden)
    stop = jax.lax.stop_gradient
    return TargetOutputs(stop(out.hidden), tuple(map(stop, out.taps)), stop(logits))


def draft_logits(head: EagleHead, x: jax.Array, dtype) -> jax.Array:
    """EAGLE-3's own LM head: x [B, L, D] -> f32 logits [B, L, Vd] (as `Eagle.logits`)."""
    h = head.norm(x).astype(dtype)
    return jnp.einsum(
        "BTD,DV->BTV", h, head.lm_head[...].astype(dtype), preferred_element_type=jnp.float32
    )


def _soft_ce(target_p: jax.Array, logits: jax.Array) -> jax.Array:
    """-sum p log softmax(logits) over the last axis: [..., V] x2 -> [...]."""
    return -jnp.sum(target_p * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def _smooth_l1(x: jax.Array, y: jax.Array) -> jax.Array:
    """torch's smooth_l1_loss (beta 1), mean over D: [B, L, D] x2 -> [B, L]."""
    d = jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))
    return jnp.mean(jnp.where(d < 1.0, 0.5 * d * d, d - 0.5), axis=-1)


def _pad_steps(x: jax.Array, length: int) -> jax.Array:
    """x [B, L+1, ...] zero-padded to [B, 2L+2, ...], so `_take` can slice any step k < L."""
    return jnp.pad(x, [(0, 0), (0, length + 1)] + [(0, 0)] * (x.ndim - 2))


def _take(padded: jax.Array, k, length: int) -> jax.Array:
    """x[:, k+1 : k+1+L] of the unpadded x (zeros past its end); k may be traced: [B, L, ...]."""
    return jax.lax.dynamic_slice_in_dim(padded, k + 1, length, axis=1)


def ttt_scan(
    head: EagleHead,
    target: Transformer,
    tokens: jax.Array,  # [B, L+1] int32
    fused: jax.Array,  # [B, L, D] step 0's input features (fc over the target's taps)
    steps: int,
    dtype,
    per_step,  # (k, x [B, L, D]) -> a pytree of arrays: what each step contributes
):
    """Training-time test (see the module docstring): step k reads token t+k+1 at RoPE position
    t+k and step k-1's output; returns per_step's pytree stacked over k = 0..steps-1.

    Step 0 runs causally; steps 1..K-1 run in one `lax.scan` (one compiled step body, however
    many steps), each layer's later keys and values kept in a [B, L, K, K-1, H] buffer that step
    k fills at k-1 and reads up to it (`diagonal_attention`)."""
    batch, length = tokens.shape[0], tokens.shape[1] - 1
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    padded = _pad_steps(tokens, length)
    first: dict[int, tuple] = {}  # layer -> (k0, v0)

    def causal(layer, q, k, v):
        first[layer] = (k, v)
        return causal_attention(q, k, v)

    x = head_forward(head, target, _take(padded, 0, length), fused, positions, causal, dtype)
    out0 = per_step(0, x)
    if steps == 1:
        return jax.tree.map(lambda a: a[None], out0)

    def buffer(a):  # [B, L, K, H] -> zeros [B, L, K, steps-1, H]
        return jnp.zeros((*a.shape[:3], steps - 1, a.shape[3]), a.dtype)

    layers = range(len(head.layers))
    later = tuple((buffer(first[i][0]), buffer(first[i][1])) for i in layers)

    def body(carry, k):
        x, later = carry
        written = list(later)

        def attention(layer, q, key, value):
            bk, bv = later[layer]
            bk = jax.lax.dynamic_update_index_in_dim(bk, key, k - 1, axis=3)
            bv = jax.lax.dynamic_update_index_in_dim(bv, value, k - 1, axis=3)
            written[layer] = (bk, bv)
            valid = jnp.arange(steps - 1) < k  # steps 1..k
            return diagonal_attention(q, *first[layer], bk, bv, valid)

        x = head_forward(head, target, _take(padded, k, length), x, positions + k, attention, dtype)
        return (x, tuple(written)), per_step(k, x)

    _, rest = jax.lax.scan(body, (x, later), jnp.arange(1, steps, dtype=jnp.int32))
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), out0, rest)


def ttt_unroll(
    head: EagleHead,
    target: Transformer,
    tokens: jax.Array,  # [B, L+1] int32
    fused: jax.Array,  # [B, L, D] step 0's input features
    steps: int,
    dtype,
) -> list[jax.Array]:
    """The head's output features [B, L, D] of training-time test steps 0..steps-1."""
    stacked = ttt_scan(head, target, tokens, fused, steps, dtype, lambda k, x: x)
    return list(stacked)


def eagle_terms(
    head: EagleHead,
    target: Transformer,
    out: TargetOutputs,  # run_target(target, tokens, spec.target_layers), outside jax.grad
    draft_ids: jax.Array,  # [Vd] int32 target id of each draft token (EAGLE-3)
    tokens: jax.Array,  # [B, L+1] int32
    mask: jax.Array,  # [B, L+1] f32: p_j predicts an assistant token
    spec: LossSpec,
    dtype,
    noise_key: jax.Array | None = None,  # EAGLE-1 training: uniform noise on the input features
) -> Terms:
    """The summed loss terms of one batch (see module docstring). The target is used for its
    embedding, RoPE and (EAGLE-1) LM head; its forward over the row arrives as `out`."""
    length = tokens.shape[1] - 1
    target_top = jnp.argmax(out.logits, axis=-1)  # [B, L+1]
    mask = mask.astype(jnp.float32)

    if spec.version == 1:
        feats = out.hidden[:, :-1].astype(jnp.float32)  # [B, L, D]
        if noise_key is not None and spec.noise > 0:
            width = spec.noise * 512 / length
            feats = feats + (jax.random.uniform(noise_key, feats.shape) - 0.5) * width
        (x,) = ttt_unroll(head, target, tokens, feats, 1, dtype)  # one causal step
        logits = target.logits(x)  # [B, L, V] through the frozen LM head
        w = mask[:, 1:]  # [B, L]
        ce = _soft_ce(jax.nn.softmax(out.logits[:, 1:], axis=-1), logits)  # [B, L]
        hit = (jnp.argmax(logits, -1) == target_top[:, 1:]).astype(jnp.float32)
        one = lambda v: jnp.sum(v)[None]
        return Terms(
            ce=one(w * ce),
            weight=one(w),
            hits=one(w * hit),
            scored=one(w),
            feature=jnp.sum(w * _smooth_l1(x, out.hidden[:, 1:])),
        )

    # EAGLE-3: soft CE on the draft vocabulary; positions whose target argmax is outside it drop.
    in_vocab = jnp.zeros((out.logits.shape[-1],), bool).at[draft_ids].set(True)[target_top]
    target_p = jax.nn.softmax(out.logits[..., draft_ids], axis=-1)  # [B, L+1, Vd]
    weight = mask * in_vocab  # [B, L+1]
    fused = fuse(head, tuple(t[:, :-1] for t in out.taps), dtype)  # [B, L, D]
    weight_p, mask_p = _pad_steps(weight, length), _pad_steps(mask, length)
    target_p, target_top = _pad_steps(target_p, length), _pad_steps(target_top, length)

    def per_step(k, x):  # step k's summed terms, from its output features x [B, L, D]
        logits = draft_logits(head, x, dtype)  # [B, L, Vd]
        w, m = _take(weight_p, k, length), _take(mask_p, k, length)  # [B, L]
        step_ce = _soft_ce(_take(target_p, k, length), logits)
        hit = draft_ids[jnp.argmax(logits, -1)] == _take(target_top, k, length)
        return jnp.sum(w * step_ce), jnp.sum(w), jnp.sum(m * hit), jnp.sum(m)

    ce, wsum, hits, scored = ttt_scan(
        head, target, tokens, fused, spec.ttt_steps, dtype, per_step
    )  # each [K]
    return Terms(
        ce=ce,
        weight=wsum,
        hits=hits,
        scored=scored,
        feature=jnp.zeros((), jnp.float32),
    )
