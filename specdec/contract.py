"""The contract shared by the decode loop, drafters and tree policies (defined once, here).

Who owns what, per generation:

    decode loop   the target cache, the token history, the PRNG key, the statistics; it runs
                  prefill and ONE target forward per step over the draft tree, computing there (and
                  nowhere else) the target features drafters ask for.
    drafter       its own state pytree (a KV cache, kept features, counters) created by
                  `init_state`, absorbed the prompt in `prefill`, grown each step through its
                  `Expander`, and told the outcome in `observe`. A self-drafter may also write the
                  target cache's tree region (`begin_step` / `end_step`) and hand the verify
                  forward what it computed (`VerifyReuse`).
    policy        a frozen, hashable config that grows a `DraftTree` by querying the expander; it
                  may keep its own state across steps (`init_state` / `observe`).

Everything a drafter or policy returns is traced inside the one jitted loop: states are pytrees of
fixed shape, nothing is stored on objects, Python-level values are static configuration.
`drafters/` and `trees/` hold implementations and import this module; no core module imports them.
"""

import abc
import dataclasses
from typing import Any, Protocol

import jax

from specdec.cache import Cache
from specdec.models import Net
from specdec.sampling import SamplingParams
from specdec.tree import ChildKind, DraftTree
from specdec.verify import Verdict

#: how a policy chooses each node's children, by name (see specdec.tree.ChildKind)
CHILDREN_MODES = {
    "top": ChildKind.DETERMINISTIC,
    "sample": ChildKind.WITH_REPLACEMENT,
    "sample_without_replacement": ChildKind.WITHOUT_REPLACEMENT,
}


# ---- what the target gives drafters -------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TargetFeatures:
    """Target hidden states of a block of tokens, computed inside a forward the loop runs anyway."""

    hidden: jax.Array  # [B, T, D] last hidden state after the final norm (EAGLE-1/2's feature)
    layers: tuple[jax.Array, ...]  # per `Drafter.target_layers` entry: [B, T, D] residual stream
    #                                after that layer (EAGLE-3 fuses three of them)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PrefillInputs:
    """What a drafter sees once, after the target's prefill."""

    target: Net  # the target's weights (its embedding, LM head, layers)
    prompt: jax.Array  # [B, P] int32, right-padded
    prompt_lens: jax.Array  # [B] int32
    first: jax.Array  # [B] int32 the token sampled after the prompt (the first step's root)
    features: TargetFeatures  # of the prompt tokens, [B, P, D] each (padding rows are junk)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DraftContext:
    """What the decode loop tells the drafter at each step (read-only)."""

    history: jax.Array  # [B, Lh] int32: prompt then generated tokens of each sequence
    hist_len: jax.Array  # [B] int32 valid tokens; the root is history[b, hist_len[b] - 1]
    vocab_size: int = dataclasses.field(metadata=dict(static=True))  # the target's V
    target: Net | None = None  # the target's weights (self-drafters run some of its layers)
    cache: Cache | None = None  # the target cache at the start of the step (lengths = hist_len-1)

    @property
    def target_length(self) -> jax.Array:
        """[B] int32: tokens committed to the target's cache (everything but the root)."""
        return self.hist_len - 1


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VerifyReuse:
    """Work a self-drafter already did on the tree, so the verify forward skips it.

    The drafter ran target layers [0, layer) for the nodes where `computed` is True, wrote those
    layers' K/V into the target cache's tree region (node i at region slot i), and kept each
    node's residual stream after them. The verify forward then runs layers [0, layer) only for the
    other nodes (at most `pending` of them per row) and layers [layer, L) for the whole tree.
    """

    hidden: jax.Array  # [B, T, D] residual stream after `layer` layers (rows with computed=False
    #                    are ignored)
    computed: jax.Array  # [B, T] bool
    layer: int = dataclasses.field(metadata=dict(static=True))  # E
    pending: int = dataclasses.field(metadata=dict(static=True))  # U: max nodes not computed


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DraftHandoff:
    """What the draft phase of a step hands back to the loop."""

    state: Any  # the drafter's own state
    cache: Cache  # the target cache (the context's, unless a self-drafter wrote its tree region)
    reuse: VerifyReuse | None  # None: the verify forward runs every layer on every node


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StepOutcome:
    """What a step's verification decided, as the drafter and policy are told it."""

    tree: DraftTree  # the tree that was verified
    verdict: Verdict  # accepted path, its length, the bonus token
    committed: jax.Array  # [B] int32 path nodes (root first) now in the target cache: the
    #                      accepted path cut at EOS / max_new_tokens; 0 for finished rows
    features: TargetFeatures  # of every tree node [B, T, D]; keep rows verdict.path[:committed]


# ---- drafters -----------------------------------------------------------------------------------


class Expander(Protocol):
    """A drafter's next-token oracle for one decoding step (state: whatever `begin_step` made)."""

    def root(self, state: Any) -> tuple[jax.Array, Any]:
        """Draft logits [B, V] after the root, and the new state."""

    def expand(self, state: Any, tree: DraftTree, frontier: jax.Array) -> tuple[jax.Array, Any]:
        """Draft logits [B, F, V] after each frontier node [B, F] of the partial tree, new state."""


class Drafter(abc.ABC):
    """Base class of all drafters: a pytree (weights are leaves, configuration is static)."""

    #: children modes (keys of CHILDREN_MODES) this drafter can produce
    supported_children: frozenset[str] = frozenset({"top"})

    #: target layers whose output (residual stream after the layer) the drafter needs, in order
    target_layers: tuple[int, ...] = ()

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int | None:
        """The drafter's vocabulary size, or None if it drafts from the sequence itself."""

    def default_policy(self) -> "Policy":
        """The tree policy `generate` uses when the caller gives none."""
        raise ValueError(f"{type(self).__name__} proposes no default policy: pass policy=...")

    def draft_cost(self, target_config) -> float | None:
        """Estimated cost of one draft level in target forwards (from sizes, not a timing), for
        policies that trade draft length against cost (`trees.Adaptive`); None: unknown."""
        return None

    def check(self, target_config, target_tokenizer, policy: "Policy") -> None:
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
        for layer in self.target_layers:
            if not 0 <= layer < target_config.num_layers:
                raise ValueError(
                    f"{type(self).__name__} asks for target layer {layer}, but the target has "
                    f"{target_config.num_layers} layers"
                )

    @abc.abstractmethod
    def init_state(self, batch: int, capacity: int, policy: "Policy") -> Any:
        """Fresh state for `batch` sequences whose target cache has `capacity` slots."""

    def prefill(self, state: Any, inputs: PrefillInputs) -> Any:
        """Absorb the prompts (and their target features). Default: nothing to do."""
        return state

    def begin_step(self, state: Any, ctx: DraftContext, policy: "Policy") -> Any:
        """The pytree the expander threads during this step. Default: the drafter's own state."""
        return state

    @abc.abstractmethod
    def expander(self, ctx: DraftContext, policy: "Policy") -> Expander:
        """The next-token oracle the policy queries during this step."""

    def end_step(self, step_state: Any, ctx: DraftContext) -> DraftHandoff:
        """Split the threaded pytree back into own state, target cache and verify reuse."""
        return DraftHandoff(state=step_state, cache=ctx.cache, reuse=None)

    def observe(self, state: Any, ctx: DraftContext, outcome: StepOutcome) -> Any:
        """Told the verification outcome of this step. Default: nothing to update."""
        return state


# ---- policies -----------------------------------------------------------------------------------


class Policy(abc.ABC):
    """Shape of the draft tree and how children are chosen (a frozen, hashable config)."""

    children: str  # one of CHILDREN_MODES

    @property
    @abc.abstractmethod
    def max_nodes(self) -> int:
        """T: node capacity of the trees it builds, root included."""

    @property
    @abc.abstractmethod
    def max_depth(self) -> int:
        """Deepest node depth (the root is depth 0)."""

    @property
    def max_children(self) -> int | None:
        """Most children any one node of its trees has (a static bound), or None if unknown. The
        verifier walks trees of sampled children in that many sibling rounds over all nodes at
        once (`specdec.verify`); without a bound, one candidate at a time."""
        return None

    @property
    def is_chain(self) -> bool:
        """Whether every tree is one path numbered by depth (node d at depth d; no node has two
        children): the loop then verifies it without a loop over candidates and commits the
        accepted nodes' K/V where they already are. Default: max_children == 1 (a path numbered
        parents first has node d at depth d). Not `max_leaves == 1`: that counts the nodes never
        expanded, and a best-first tree (SpecExec) can end with one such node yet branch."""
        return self.max_children == 1

    #: True when node i of the returned tree need not be the node the expander computed at
    #: index i (a policy that reranks a working tree, like EAGLE-2's Dynamic). Self-drafters keep
    #: per-node work by index (`VerifyReuse`, K/V in the target's tree region), so they cannot
    #: hand it to the verify forward under such a policy.
    renumbers_nodes: bool = False

    @property
    def draft_nodes(self) -> int:
        """Capacity of the working tree the expander grows (>= max_nodes): drafters size their
        per-node buffers and the region slots they write by it. A policy that drafts more nodes
        than it keeps (EAGLE-2's Dynamic) verifies only max_nodes. Default: max_nodes."""
        return self.max_nodes

    @property
    def max_leaves(self) -> int:
        """Most nodes of a tree that are never expanded (a self-drafter's verify reuse leaves
        exactly these to the verify forward). Default: every node."""
        return self.max_nodes

    @property
    def child_kind(self) -> ChildKind:
        return CHILDREN_MODES[self.children]

    def check(self, vocab_size: int) -> None:  # noqa: B027 (optional hook, no-op by default)
        """Raise ValueError if this policy cannot draft over a vocabulary of vocab_size tokens."""

    def bind(self, drafter: "Drafter", target_config) -> "Policy":
        """This policy with settings left to the drafter resolved (called by `generate` before
        compiling, e.g. `Adaptive`'s draft cost). Default: unchanged."""
        return self

    def init_state(self, batch: int) -> Any:
        """State kept across steps (a bandit's posterior, measured acceptance). Default: none."""
        return ()

    @abc.abstractmethod
    def build(
        self,
        expander: Expander,
        state: Any,
        root: jax.Array,
        params: SamplingParams,
        key: jax.Array,
        policy_state: Any = (),
    ) -> tuple[DraftTree, Any]:
        """Grow a tree below root tokens [B]; returns the tree and the expander's new state."""

    def observe(self, policy_state: Any, outcome: StepOutcome) -> Any:
        """Told the verification outcome of this step. Default: nothing to update."""
        return policy_state
