"""The ONE sampling module: logits -> the distribution tokens are drawn from, for every path.

The target's distribution at each tree node, the draft distribution q the drafter samples children
from, and the bonus token all go through `probabilities`, so temperature / top-k / top-p are applied
identically by construction (a classic bug in public speculative-decoding code is applying them to
one side only). The values are traced arrays: changing them never recompiles. The *mode* (greedy,
sampling, or sampling through a top-k / top-p filter) is static, so each mode is its own compiled
loop with no branch left in it: a `lax.cond` on a GPU makes the host read its predicate back
(a device-to-host wait) every time it runs, and `probabilities` runs at every draft level.

temperature == 0 means greedy: the distribution is a one-hot on the argmax (first index on ties),
which makes every verification law reduce to exact greedy acceptance.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("greedy", "sample", "filter")  # filter: sampling through top-k and / or top-p


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Temperature / top-k / top-p as float32 / int32 scalars (traced, so no recompiles), and
    the static mode they imply (one of MODES; part of the compiled loop's key)."""

    temperature: jax.Array  # [] float32; 0 = greedy
    top_k: jax.Array  # [] int32; 0 = no top-k filter
    top_p: jax.Array  # [] float32 in (0, 1]; 1 = no nucleus filter
    mode: str = dataclasses.field(default="filter", metadata=dict(static=True))

    @staticmethod
    def create(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> "SamplingParams":
        """Validated parameters; raises ValueError naming the bad value."""
        validate(temperature, top_k, top_p)
        if float(temperature) == 0:
            mode = "greedy"
        elif int(top_k) > 0 or np.float32(top_p) < 1:
            mode = "filter"
        else:
            mode = "sample"
        return SamplingParams(
            temperature=jnp.asarray(temperature, jnp.float32),
            top_k=jnp.asarray(int(top_k), jnp.int32),
            top_p=jnp.asarray(top_p, jnp.float32),
            mode=mode,
        )

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"sampling mode must be one of {MODES}, got {self.mode!r}")


def validate(temperature: float, top_k: int, top_p: float) -> None:
    """ValueError unless temperature >= 0, top_k >= 0 and top_p in (0, 1] hold in float32 / int32.

    The loop computes in float32: a temperature that overflows it (1e39) or a top_p that rounds to
    0 (1e-40) would silently turn sampling into garbage, so they are rejected here.
    """
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise ValueError(f"{name} must be a number, got {value!r}")
    as_f32 = lambda x: float(np.float32(x)) if abs(float(x)) < 1e39 else math.inf
    temperature_f32, top_p_f32 = as_f32(temperature), as_f32(top_p)
    if math.isnan(temperature_f32) or math.isinf(temperature_f32) or temperature_f32 < 0:
        raise ValueError(f"temperature must be a finite float32 number >= 0, got {temperature!r}")
    # XLA flushes float32 subnormals to zero, so anything below the smallest normal is 0 there.
    tiny = float(np.finfo(np.float32).tiny)
    if float(temperature) > 0 and temperature_f32 < tiny:
        raise ValueError(f"temperature {temperature!r} is 0 in float32; use 0 for greedy")
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {top_k!r}")
    if top_k > 2**31 - 1:
        raise ValueError(f"top_k must fit in int32 (use 0 to disable it), got {top_k!r}")
    if math.isnan(top_p_f32) or not tiny <= top_p_f32 <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] and not 0 in float32, got {top_p!r}")


def _filter(scaled: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Mask (to -inf) logits outside top-k, then outside the top-p nucleus. scaled: [..., V]."""
    vocab = scaled.shape[-1]
    ordered = -jnp.sort(-scaled, axis=-1)  # [..., V] descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = jnp.take(ordered, k - 1, axis=-1)[..., None]  # [..., 1]
    # Ties with the k-th value are kept (as HF's TopKLogitsWarper does).
    scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    ordered = jnp.where(jnp.arange(vocab) < k, ordered, -jnp.inf)
    # Nucleus: keep the smallest prefix of the sorted tokens whose mass reaches top_p; a token is
    # kept when the mass strictly before it is < top_p (so the top token is always kept).
    probs_sorted = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs_sorted, axis=-1) - probs_sorted
    kept = (mass_before < top_p) | (jnp.arange(vocab) == 0)  # the top token, by construction
    threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(scaled < threshold, -jnp.inf, scaled)


def probabilities(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """float32 [..., V]: the distribution to sample from after temperature, top-k and top-p."""
    logits = logits.astype(jnp.float32)
    greedy = jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=jnp.float32)
    if params.mode == "greedy":  # static: no branch in the compiled loop
        return greedy
    # Shift by the max first: (x - max) / t <= 0 never overflows to +inf for a tiny t.
    scaled = (logits - jnp.max(logits, axis=-1, keepdims=True)) / params.temperature
    if params.mode == "filter":
        scaled = _filter(scaled, params.top_k, params.top_p)
    # The sampling modes stay right at temperature 0 too (params built without `create`).
    return jnp.where(params.temperature > 0, jax.nn.softmax(scaled, axis=-1), greedy)


def sample(key: jax.Array, probs: jax.Array) -> jax.Array:
    """int32 [...]: one draw from each distribution probs [..., V] (zeros are never drawn)."""
    logp = jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), -jnp.inf)
    return jax.random.categorical(key, logp, axis=-1).astype(jnp.int32)


def sample_without_replacement(
    key: jax.Array, probs: jax.Array, num: int
) -> tuple[jax.Array, jax.Array]:
    """Gumbel-top-k: `num` distinct draws in sampling order from probs [..., V].

    Returns tokens int32 [..., num] and a bool [..., num] that is False where the distribution had
    fewer than `num` tokens of nonzero probability (those draws are impossible).
    """
    logp = jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), -jnp.inf)
    perturbed = logp + jax.random.gumbel(key, probs.shape, jnp.float32)
    values, tokens = jax.lax.top_k(perturbed, num)
    return tokens.astype(jnp.int32), jnp.isfinite(values)
