"""The drafter interface: who proposes draft trees, with its own state, told what was accepted.

A drafter is a registered pytree: weights are leaves (traced into the decode jit), configuration is
static. Its per-generation state (its own KV cache, features, counters) is an explicit pytree that
the decode loop threads through every step; nothing is stored on the object.
"""

import abc
import dataclasses
from typing import Any

import jax

from trees.policy import Expander, Policy


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DraftContext:
    """What the decode loop tells the drafter at each step."""

    history: jax.Array  # [B, Lh] int32: prompt then generated tokens of each sequence
    hist_len: (
        jax.Array
    )  # [B] int32: valid tokens in history; the root is history[b, hist_len[b] - 1]
    vocab_size: int = dataclasses.field(metadata=dict(static=True))  # the target's V

    @property
    def target_length(self) -> jax.Array:
        """[B] int32: tokens committed to the target's cache (everything but the root)."""
        return self.hist_len - 1


class Drafter(abc.ABC):
    """Base class of all drafters."""

    #: children modes (see trees.policy.CHILDREN_MODES) this drafter can produce
    supported_children: frozenset[str] = frozenset({"top"})

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int | None:
        """The drafter's vocabulary size, or None if it drafts from the sequence itself."""

    def check(self, target_config, target_tokenizer, policy: Policy) -> None:
        """Raise ValueError if this drafter cannot serve `policy` for this target."""
        if self.vocab_size is not None and self.vocab_size != target_config.vocab_size:
            raise ValueError(
                f"drafter vocabulary size {self.vocab_size} != target vocabulary size "
                f"{target_config.vocab_size}: drafter and target must share a tokenizer"
            )
        if policy.children not in self.supported_children:
            raise ValueError(
                f"{type(self).__name__} cannot serve a policy with children={policy.children!r}; "
                f"it supports {sorted(self.supported_children)}"
            )

    @abc.abstractmethod
    def init_state(self, batch: int, capacity: int, policy: Policy) -> Any:
        """Fresh state for `batch` sequences whose target cache has `capacity` slots."""

    def prefill(self, state: Any, prompt: jax.Array, prompt_lens: jax.Array) -> Any:
        """Absorb the prompts [B, P] (right-padded, true lengths [B]). Default: nothing to do."""
        return state

    @abc.abstractmethod
    def expander(self, ctx: DraftContext, policy: Policy) -> Expander:
        """The next-token oracle the policy queries during this step."""

    def observe(self, state: Any, ctx: DraftContext, tree, verdict) -> Any:
        """Told the verification outcome of this step. Default: nothing to update."""
        return state
