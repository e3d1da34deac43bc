"""Pure training functions: schedule, AdamW, the losses, and the train / eval steps to jit.

Parameters travel as a nested dict of float32 arrays (the `nnx.to_pure_dict` layout): optax, orbax
and jax sharding all take plain dicts, and `ModelDef.module(params)` rebuilds the NNX module inside
the traced function (free under jit). Compute runs in the module's `dtype` (bfloat16 on GPUs)
while these float32 master weights take the updates.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from specdec.model import Transformer
from train.configs import TrainConfig
from train.layerskip import exit_nll, layerskip_loss

Params = dict[str, Any]  # nested dict of arrays, nnx.to_pure_dict(nnx.state(module)) layout


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """A Transformer's static graph, able to rebuild the module from a pure dict of parameters."""

    graphdef: nnx.GraphDef
    abstract: nnx.State  # shapes and dtypes only: the structure a pure dict is poured into

    @staticmethod
    def split(module: Transformer) -> tuple["ModelDef", Params]:
        graphdef, state = nnx.split(module)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
        return ModelDef(graphdef, abstract), nnx.to_pure_dict(state)

    def module(self, params: Params) -> Transformer:
        # Matched by key, as specdec.checkpoint loads weights, so no leaf order is assumed.
        state = jax.tree.map(lambda x: x, self.abstract)  # a fresh State to fill
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state)

    def logits(self, params: Params, inputs: jax.Array) -> jax.Array:
        """Causal forward: inputs int32 [B, L] -> float32 logits [B, L, V]."""
        return self.module(params).logits(self.hidden(params, inputs))

    def hidden(self, params: Params, inputs: jax.Array) -> jax.Array:
        """Causal forward up to the final norm: inputs int32 [B, L] -> [B, L, D]."""
        module = self.module(params)
        batch, length = inputs.shape
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        return module(inputs, positions).hidden


# ---- schedule and optimizer --------------------------------------------------------------------


def learning_rate(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr over cfg.warmup_steps, then cosine decay to cfg.lr * min_lr_ratio
    at `total_steps` (the schedule's length is a run-time value: a time budget may shorten it)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW behind a global-norm clip, *without* the learning-rate scale.

    This is `optax.adamw` (scale_by_adam -> add_decayed_weights -> scale_by_learning_rate) with
    the last factor, -lr, applied by the train step, so the learning rate is an input of the step
    rather than baked into it. Weight decay is masked to matrices (norm weights are not decayed).
    """
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
    )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything an optimizer step changes (and a checkpoint holds, with the data position)."""

    step: jax.Array  # int32 [], optimizer steps taken
    params: Params  # float32 master weights
    opt: optax.OptState  # clip + Adam moments (+ empty decay state)

    def to_dict(self) -> dict:
        return {"step": self.step, "params": self.params, "opt": self.opt}

    @staticmethod
    def from_dict(tree: dict) -> "TrainState":
        return TrainState(step=tree["step"], params=tree["params"], opt=tree["opt"])


# ---- losses ----------------------------------------------------------------------------------


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Negative log-likelihood of each target: logits f32 [B, L, V], targets [B, L] -> [B, L]."""
    # The target's logit as a masked sum, not a gather: its gradient is then an elementwise mask
    # that fuses with the softmax's, where a gather's is a scatter into a zero [B, L, V] array.
    vocab = jnp.arange(logits.shape[-1], dtype=targets.dtype)  # [V]
    picked = jnp.sum(jnp.where(vocab == targets[..., None], logits, 0.0), axis=-1)  # [B, L]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def chunked_token_nll(
    module: Transformer, hidden: jax.Array, targets: jax.Array, chunk: int
) -> jax.Array:
    """token_nll(module.logits(hidden), targets) computed `chunk` tokens at a time, each chunk's
    logits recomputed in the backward pass: hidden [B, L, D], targets [B, L] -> [B, L]. No
    [B, L, V] array exists, forward or backward (only [chunk, V])."""
    batch, length, dim = hidden.shape
    if (batch * length) % chunk:
        raise ValueError(f"{chunk=} does not divide the {batch * length} tokens of the batch")

    @jax.checkpoint
    def one(args):
        h, t = args  # [chunk, D], [chunk]
        return token_nll(module.logits(h), t)

    nll = jax.lax.map(
        one, (hidden.reshape(-1, chunk, dim), targets.reshape(-1, chunk))
    )  # [B * L / chunk, chunk]
    return nll.reshape(batch, length)


def distill_kl(student: jax.Array, teacher: jax.Array, temperature: float) -> jax.Array:
    """KL(teacher || student) per token, both softened by `temperature`, times T^2 (Hinton et al.,
    so its gradients keep their scale as T changes): logits [B, L, V] -> [B, L]."""
    log_p = jax.nn.log_softmax(teacher / temperature, axis=-1)  # [B, L, V]
    log_q = jax.nn.log_softmax(student / temperature, axis=-1)  # [B, L, V]
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1) * temperature**2


# ---- steps -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen teacher for distillation: its graph (static) and how to run it."""

    model: ModelDef

    def logits(self, params: Params, inputs: jax.Array) -> jax.Array:
        return jax.lax.stop_gradient(self.model.logits(params, inputs))


def make_train_step(
    model: ModelDef, cfg: TrainConfig, teacher: Teacher | None = None
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """(state, tokens int32 [B, L+1], lr f32 [], teacher_params, total_steps int32 []) ->
    (new state, metrics).

    total_steps (the schedule's length; default cfg.steps) only matters with cfg.layerskip, whose
    curricula depend on the progress through training. Its layer dropout draws from a key derived
    from cfg.seed and the step, so a resumed run draws exactly what an uninterrupted one did.
    """
    tx = optimizer(cfg)
    weight = cfg.distill_weight if teacher is not None else 0.0
    recipe = cfg.layerskip

    def loss_fn(params, tokens, teacher_params, step, total_steps):
        inputs, targets = tokens[:, :-1], tokens[:, 1:]  # [B, L] each
        if recipe is not None:  # TrainConfig forbids distillation with it
            key = jax.random.fold_in(jax.random.key(cfg.seed), step)
            loss, metrics = layerskip_loss(
                model.module(params), inputs, targets, recipe, key, step, total_steps
            )
            return loss, {"loss": loss, "kl": jnp.zeros((), jnp.float32), **metrics}
        kl = jnp.zeros((), jnp.float32)
        if cfg.loss_chunk:  # TrainConfig forbids it with distillation
            hidden = model.hidden(params, inputs)  # [B, L, D]
            ce = chunked_token_nll(model.module(params), hidden, targets, cfg.loss_chunk).mean()
            return ce, {"loss": ce, "ce": ce, "kl": kl}
        logits = model.logits(params, inputs)  # [B, L, V]
        ce = token_nll(logits, targets).mean()
        if weight > 0.0:
            teacher_logits = teacher.logits(teacher_params, inputs)  # [B, L, V]
            kl = distill_kl(logits, teacher_logits, cfg.distill_temperature).mean()
        loss = (1.0 - weight) * ce + weight * kl
        return loss, {"loss": loss, "ce": ce, "kl": kl}

    def train_step(state: TrainState, tokens, lr, teacher_params=None, total_steps=None):
        total_steps = cfg.steps if total_steps is None else total_steps
        grads, metrics = jax.grad(loss_fn, has_aux=True)(
            state.params, tokens, teacher_params, state.step, total_steps
        )
        updates, opt = tx.update(grads, state.opt, state.params)
        params = jax.tree.map(lambda p, u: p - lr * u, state.params, updates)
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        metrics = {**metrics, "grad_norm": grad_norm}
        return TrainState(step=state.step + 1, params=params, opt=opt), metrics

    return train_step


def make_eval_step(
    model: ModelDef, exits: tuple[int, ...] | None = None
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """(params, tokens int32 [B, L+1], weights f32 [B]) -> (summed NLL, scored tokens).

    With `exits` (ascending E in [1, num_layers]), the summed NLL is f32 [X], one per exit: the
    residual stream after layers [0, E) through the final norm + LM head (E = num_layers is the
    full model). Otherwise it is the full model's, f32 [].
    """

    def eval_step(params, tokens, weights):
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        count = jnp.sum(weights) * targets.shape[1]
        if exits is not None:
            return exit_nll(model.module(params), inputs, targets, weights, exits), count
        nll = token_nll(model.logits(params, inputs), targets)  # [B, L]
        return jnp.sum(nll * weights[:, None]), count

    return eval_step


def init_state(params: Params, cfg: TrainConfig) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt=optimizer(cfg).init(params))
