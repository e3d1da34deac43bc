"""Fixed-shape policies: `Chain(depth)` and `Static(paths)` (Medusa / EAGLE-1 `choices`)."""

import dataclasses
import functools

from specdec.contract import CHILDREN_MODES
from trees.policy import StaticShapePolicy, Topology


def _check_children(children: str) -> None:
    if children not in CHILDREN_MODES:
        raise ValueError(f"children={children!r} is not one of {sorted(CHILDREN_MODES)}")


@dataclasses.dataclass(frozen=True)
class Chain(StaticShapePolicy):
    """A single path of `depth` draft tokens (classic speculative decoding)."""

    depth: int
    children: str = "top"  # "top": the drafter's argmax; "sample": a draw from q (Leviathan)

    def __post_init__(self):
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"Chain depth must be an integer >= 1, got {self.depth!r}")
        if self.children == "sample_without_replacement":
            raise ValueError("a chain has one child per node; use children='sample' or 'top'")
        _check_children(self.children)

    @functools.cached_property
    def topology(self) -> Topology:
        return Topology.from_paths([[0] * d for d in range(1, self.depth + 1)])


@dataclasses.dataclass(frozen=True)
class Static(StaticShapePolicy):
    """A fixed tree given as root-to-node rank paths.

    `[0, 1]` is the drafter's second-ranked child of its top-ranked first token. With
    children="top" ranks are the drafter's best candidates; with "sample" or
    "sample_without_replacement" rank r is the r-th draw from q at that node.
    """

    paths: tuple[tuple[int, ...], ...]
    children: str = "top"

    def __post_init__(self):
        if not isinstance(self.paths, list | tuple) or not self.paths:
            raise ValueError("Static needs a non-empty list of root-to-node rank paths")
        _check_children(self.children)
        topology = Topology.from_paths(list(self.paths))  # validates
        object.__setattr__(self, "paths", tuple(tuple(p) for p in self.paths))
        object.__setattr__(self, "_topology", topology)

    @property
    def topology(self) -> Topology:
        return self._topology
