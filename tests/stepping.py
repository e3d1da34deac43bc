"""Running the decode loop one step at a time, to check invariants after every step."""

import dataclasses

import jax
import jax.numpy as jnp

from specdec.engine.generate import prepare
from specdec.engine.loop import initial_state, step

_init = jax.jit(initial_state, static_argnames=("policy", "shape"))


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Box:
    policy: object


@jax.jit
def _step(target, drafter, policy_box, max_new, params, eos, state):
    return step(target, drafter, policy_box.policy, max_new, params, eos, state)


def run_steps(model, prompts, max_new_tokens, **kwargs):
    """The decode loop one step at a time: (states after prefill and after each step, shape)."""
    prepared = prepare(model, prompts, max_new_tokens=max_new_tokens, **kwargs)
    args, policy, shape = prepared.args, prepared.policy, prepared.shape
    target, drafter, _, _, _, _, max_new, params, _, eos = args
    state = _init(*args, policy=policy, shape=shape)
    states = [state]
    while not bool(jnp.all(state.done)):
        state = _step(target, drafter, _Box(policy), max_new, params, eos, state)
        states.append(state)
        assert len(states) < 200
    return states, shape
