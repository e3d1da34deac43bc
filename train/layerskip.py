"""The LayerSkip training recipe (Elhoushi et al., 2024): layer dropout plus early-exit losses.

Trains a target so that its first E layers, followed by the shared final norm + LM head, already
predict well: what `drafters.EarlyExit(exit_layer=E)` drafts with. Two ingredients:

- Layer dropout: during training each sequence skips layer l (the layer passes its input through)
  with probability p_l = p_max * (2^(l/(L-1)) - 1): 0 at the first layer, p_max at the last, so
  the late layers, which early exits leave out, matter less. Pretraining from scratch also scales
  the rates by S(t) = 2^(t/T) - 1, which rises from 0 to 1 over the T steps. Off at evaluation.
- Early-exit loss: cross-entropy of the logits at exit E (the residual stream after layers [0, E),
  through the final norm + LM head) for the selected exits, weighted by scales proportional to the
  cumulative sum of layer numbers, E(E+1)/2, times `e_scale` on every exit but the last, and
  normalised over the exits the curriculum enables at this step:
      loss(t) = sum_E C(t, E) s(E) CE_E / sum_E C(t, E) s(E),   s(E) = E(E+1)/2 * (e_scale if E < L)
  Curricula C(t, E): "rotational" enables every R-th layer, shifted by one each step;
  "gradual" enables exits from the last layer down to the first, all of them by half of training;
  "none" enables every selected exit at every step. The final exit (the full model) is always on.

Exits are named by E, the number of layers run (1..L), as `drafters.EarlyExit(exit_layer=E)` and
`Transformer.run_layers(stop=E)` name them; the paper's layer l is E = l + 1 (its cumulative sum
of 0-based indices would give the first exit no weight at all).

Memory: each exit's logits [B, T, V] exist only inside a rematerialised function that returns its
summed NLL, so the backward pass keeps the exit's hidden state [B, T, D], not its softmax; exits
the curriculum disables are skipped by `lax.cond` (no head matmul). Layers are rematerialised one
at a time when the module's `remat` is on (`Transformer.run_layers` does it). Layer dropout
selects per sequence with `where`, so a dropped layer still costs its FLOPs in this forward.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from specdec.model import Transformer

CURRICULA = ("rotational", "gradual", "none")


@dataclasses.dataclass(frozen=True)
class LayerSkip:
    """The recipe's hyperparameters (the model's depth L comes from the model config)."""

    p_max: float = 0.1  # dropout rate of the last layer (earlier layers: less, see dropout_rates)
    exits: tuple[int, ...] | None = None  # early exits E in [1, L) to train; None: every layer
    e_scale: float = 1.0  # factor on every early exit's scale (the final exit keeps 1)
    curriculum: str = "rotational"  # one of CURRICULA
    rotation: int = 4  # R of the rotational curriculum
    dropout_warmup: bool = False  # rates times 2^(t/T) - 1 (for pretraining from scratch)

    def __post_init__(self):
        if not 0.0 <= self.p_max <= 1.0:
            raise ValueError(f"{self.p_max=} must be in [0, 1]")
        if self.e_scale < 0:
            raise ValueError(f"{self.e_scale=} must be >= 0")
        if self.curriculum not in CURRICULA:
            raise ValueError(f"{self.curriculum=} must be one of {CURRICULA}")
        if self.rotation < 1:
            raise ValueError(f"{self.rotation=} must be >= 1")
        if self.exits is not None:
            object.__setattr__(self, "exits", tuple(sorted(set(self.exits))))

    def check(self, num_layers: int) -> None:
        """Raise if the exits do not fit a model of `num_layers` layers."""
        bad = [e for e in self.exits or () if not 1 <= e <= num_layers]
        if bad:
            raise ValueError(f"exits {bad} are outside [1, {num_layers}] ({num_layers=})")

    def exit_layers(self, num_layers: int) -> tuple[int, ...]:
        """The trained exits, ascending, always ending with the full model's exit L."""
        self.check(num_layers)
        early = range(1, num_layers) if self.exits is None else self.exits
        return tuple(sorted({*early, num_layers}))


# ---- schedules (pure functions) ----------------------------------------------------------------


def dropout_rates(p_max: float, num_layers: int) -> np.ndarray:
    """p_l = p_max * (2^(l / (L-1)) - 1) for layers l = 0..L-1: float64 [L] (L = 1: [0])."""
    depth = np.arange(num_layers) / max(num_layers - 1, 1)  # l / (L-1), 0 at the first layer
    return p_max * (np.exp2(depth) - 1.0)


def dropout_time_scale(step: jax.Array, total_steps: jax.Array) -> jax.Array:
    """S(t) = 2^(t/T) - 1: the dropout rates' curriculum in time when pretraining from scratch."""
    progress = jnp.clip(step / jnp.maximum(total_steps, 1), 0.0, 1.0)
    return jnp.exp2(progress.astype(jnp.float32)) - 1.0


def exit_scales(
    exits: tuple[int, ...], num_layers: int, e_scale: float, enabled: jax.Array
) -> jax.Array:
    """Per-exit loss scales f32 [X]: E(E+1)/2, times e_scale below the last layer, zero where
    not `enabled` (bool [X]), normalised to sum to 1 over the enabled exits."""
    e = np.asarray(exits, np.float64)
    raw = e * (e + 1) / 2 * np.where(e < num_layers, e_scale, 1.0)  # [X]
    scales = jnp.where(enabled, jnp.asarray(raw, jnp.float32), 0.0)
    return scales / jnp.maximum(jnp.sum(scales), jnp.finfo(jnp.float32).tiny)


def curriculum_mask(
    cfg: LayerSkip,
    exits: tuple[int, ...],
    num_layers: int,
    step: jax.Array,
    total_steps: jax.Array,
) -> jax.Array:
    """Which exits take part at optimizer step `step` (traced) of `total_steps`: bool [X]."""
    e = jnp.asarray(exits, jnp.int32)  # [X]
    final = e == num_layers
    if cfg.curriculum == "rotational":
        # Layer l = E - 1 is on when l = t (mod R): every R-th layer, shifted by one each step.
        on = jnp.mod(e - 1 - step, cfg.rotation) == 0
    elif cfg.curriculum == "gradual":
        # Exit E switches on at t = (L - E) / (L - 1) * T / 2: the last first, exit 1 at T / 2.
        t = jnp.asarray(step, jnp.float32)
        start = (num_layers - e) / max(num_layers - 1, 1) * (total_steps / 2)
        on = t >= start
    else:
        on = jnp.ones(e.shape, bool)
    return on | final


# ---- forward and loss --------------------------------------------------------------------------


def exit_nll(
    module: Transformer,
    inputs: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    exits: tuple[int, ...],
    *,
    enabled: jax.Array | None = None,
    drop_rates: np.ndarray | None = None,
    drop_scale: jax.Array | float = 1.0,
    key: jax.Array | None = None,
) -> jax.Array:
    """Weighted NLL summed over tokens at each exit: f32 [X] (zero where not enabled).

    inputs, targets: int32 [B, T]; weights: f32 [B] per sequence (1 / (B T) gives the mean CE;
    0 drops a padding row). exits: ascending E in [1, L]. enabled: bool [X] (None: all).
    drop_rates: float [L] layer dropout rates, times `drop_scale`, drawn per sequence from `key`
    (None: no dropout, as at evaluation).
    """
    batch, length = inputs.shape
    num_layers = len(module.layers)
    if list(exits) != sorted(set(exits)) or not all(1 <= e <= num_layers for e in exits):
        raise ValueError(f"{exits=} must be ascending, distinct and within [1, {num_layers}]")
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))

    @jax.checkpoint  # the backward pass recomputes this exit's logits instead of keeping them
    def summed_nll(x):  # x [B, T, D] -> f32 []
        logits = module.logits(module.norm(x))  # [B, T, V] f32
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [B, T]
        return jnp.sum(nll * weights[:, None])

    skip = lambda x: jnp.zeros((), jnp.float32)
    x = module.embed_tokens(inputs)  # [B, T, D]
    out = []
    for index in range(num_layers):
        y = module.run_layers(x, positions, start=index, stop=index + 1)[0]  # [B, T, D]
        if drop_rates is not None and drop_rates[index] > 0:
            p = drop_rates[index] * drop_scale
            dropped = jax.random.bernoulli(jax.random.fold_in(key, index), p, (batch,))  # [B]
            y = jnp.where(dropped[:, None, None], x, y)  # a dropped layer passes x through
        x = y
        if index + 1 in exits:
            i = exits.index(index + 1)
            if enabled is None:
                out.append(summed_nll(x))
            else:  # a disabled exit skips its head matmul (lax.cond runs one branch)
                out.append(jax.lax.cond(enabled[i], summed_nll, skip, x))
    return jnp.stack(out)


def layerskip_loss(
    module: Transformer,
    inputs: jax.Array,
    targets: jax.Array,
    cfg: LayerSkip,
    key: jax.Array,
    step: jax.Array,
    total_steps: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The recipe's training loss at optimizer step `step`, and its metrics.

    Returns (loss f32 [], {"ce": the full model's mean CE (under layer dropout), "exit_ce": f32 [X]
    mean CE at each trained exit (0 where the curriculum left it out), "exit_on": bool [X]}).
    """
    batch, length = inputs.shape
    num_layers = len(module.layers)
    exits = cfg.exit_layers(num_layers)
    enabled = curriculum_mask(cfg, exits, num_layers, step, total_steps)
    scale = dropout_time_scale(step, total_steps) if cfg.dropout_warmup else 1.0
    weights = jnp.full((batch,), 1.0 / (batch * length), jnp.float32)
    ce = exit_nll(
        module,
        inputs,
        targets,
        weights,
        exits,
        enabled=enabled,
        drop_rates=dropout_rates(cfg.p_max, num_layers),
        drop_scale=scale,
        key=key,
    )  # [X]
    loss = jnp.sum(exit_scales(exits, num_layers, cfg.e_scale, enabled) * ce)
    return loss, {"ce": ce[-1], "exit_ce": ce, "exit_on": enabled}
