"""Sequoia (Chen et al. 2024): the static tree that maximises expected accepted tokens per step.

Positional acceptance: the probability that a node's rank-r child is the one verification accepts
(given the node itself was accepted) is a number a[r] that depends on r only, not on the context
or on how many siblings follow. Both the point-mass rule ("top" children) and the
without-replacement rule ("sample_without_replacement") decide rank r from ranks 0..r only, so a
measured a[r] does not change when the tree grows wider. A node's chance of lying on the accepted
path is then the product of a[rank] along its root path, and the expected tokens emitted per step
(accepted drafts + the bonus) is the sum of that over the tree's nodes, root (1) included.

The dynamic program (Sequoia's, in the form used here), for m nodes and depth <= l below a node:

    f(1, l) = 1;   f(m, 0) = -inf for m > 1
    g(m, l, 1) = a[0] f(m, l - 1)
    g(m, l, b) = max_{y >= 1} g(m - y, l, b - 1) + a[b - 1] f(y, l - 1)   (child rank b-1 gets y)
    f(m, l) = 1 + max_b g(m - 1, l, b)

`budget` counts the root (the verify forward's width; `Policy.max_nodes == budget`).

Hardware-aware choice: `choose_budget` minimises (depth x draft-level time + verify time(budget)) /
f(budget, depth) over the measured budgets; `measure_step_times` measures both times on the
current device with `specdec.generate`, and `measure_acceptance` measures a[r] on real prompts.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import numpy as np

from trees.policy import StaticShapePolicy, Topology

# ---- the dynamic program ------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _tables(acceptance: tuple[float, ...], budget: int, depth: int):
    """f [L + 1, budget + 1] and the choices that rebuild each optimum (module docstring).

    Rows stop at L <= depth, the first depth limit that no longer helps (every deeper row would
    repeat row L): read row min(l, L), as `_row` does.
    best_b[l, m]: children of the root of the best m-node tree of depth <= l (0: a leaf);
    split[l, b, m]: nodes of child rank b-1's subtree when ranks 0..b-1 share m nodes.
    """
    k = len(acceptance)
    a = np.asarray(acceptance, np.float64)[:, None]  # [k, 1]
    f = [np.where(np.arange(budget + 1) == 1, 1.0, -np.inf)]  # depth 0: the root alone
    best_b, split = [np.zeros(budget + 1, np.int64)], [np.zeros((k + 1, budget + 1), np.int64)]
    rest = np.arange(budget + 1)[:, None] - np.arange(budget + 1)[None, :]  # [M, Y]: m - y
    pairs = (np.arange(budget + 1)[None, :] >= 1) & (rest >= 1)  # y >= 1 and m - y >= 1
    rest = np.clip(rest, 0, budget)
    for _ in range(depth):
        child = f[-1]  # [M]: the best subtree of a child, by its node count
        finite = np.isfinite(child)
        # a[r] x child[y], with 0 x -inf (an impossible subtree) kept at -inf
        weighted = np.where(finite, a * np.where(finite, child, 0.0), -np.inf)  # [k, M]
        g = weighted[0]  # ranks 0..b-1 sharing m nodes, b = 1: all to rank 0
        below = np.concatenate([[-np.inf], g[:-1]])  # the root's children share m - 1 nodes
        row_b, row_split = np.where(np.isfinite(below), 1, 0), np.zeros((k + 1, budget + 1), int)
        row_split[1] = np.arange(budget + 1)
        best = below
        for b in range(2, k + 1):
            # g_b[m] = max_y g_{b-1}[m - y] + a[b-1] child[y]
            cand = np.where(pairs, g[rest] + weighted[b - 1][None, :], -np.inf)  # [M, Y]
            row_split[b] = np.argmax(cand, axis=1)
            g = cand[np.arange(budget + 1), row_split[b]]
            below = np.concatenate([[-np.inf], g[:-1]])
            row_b = np.where(below > best, b, row_b)
            best = np.maximum(best, below)
        row = np.where(np.arange(budget + 1) == 1, 1.0, 1.0 + best)
        if np.array_equal(row, f[-1]):
            break  # one more level of depth no longer helps any size
        f.append(row)
        best_b.append(row_b)
        split.append(row_split)
    return np.stack(f), np.stack(best_b), np.stack(split)


def _row(table: np.ndarray, level: int) -> np.ndarray:
    return table[min(level, table.shape[0] - 1)]


def _paths(best_b, split, depth: int, nodes: int) -> list[tuple[int, ...]]:
    """Rank paths of the optimal `nodes`-node tree of depth <= `depth` (an explicit stack: a
    chain of a thousand nodes would overflow Python's recursion)."""
    paths, stack = [], [((), depth, nodes)]
    while stack:
        prefix, level, count = stack.pop()
        remaining = count - 1
        for b in range(int(_row(best_b, level)[count]), 0, -1):
            y = int(_row(split, level)[b, remaining])
            child = (*prefix, b - 1)
            paths.append(child)
            stack.append((child, level - 1, y))
            remaining -= y
    return paths


def optimal_tree(
    acceptance: Sequence[float], budget: int, depth: int | None = None
) -> tuple[float, list[tuple[int, ...]]]:
    """(expected tokens per step, rank paths) of the best tree of `budget` nodes (root included)
    and depth <= `depth` (None: no limit) for the per-rank acceptance vector."""
    acceptance, depth = _check(acceptance, budget, depth)
    f, best_b, split = _tables(acceptance, budget, depth)
    value = _row(f, depth)[budget]
    if not np.isfinite(value):
        raise ValueError(
            f"no tree of {budget} nodes has depth <= {depth} and at most {len(acceptance)} "
            "children per node (the acceptance vector's length)"
        )
    return float(value), sorted(_paths(best_b, split, depth, budget))


def expected_tokens(paths: Sequence[Sequence[int]], acceptance: Sequence[float]) -> float:
    """Expected tokens per step (accepted drafts + bonus) of a tree under positional acceptance."""
    total = 1.0
    for path in paths:
        total += math.prod(acceptance[r] if r < len(acceptance) else 0.0 for r in path)
    return total


def _check(acceptance, budget, depth) -> tuple[tuple[float, ...], int]:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 2:
        raise ValueError(f"Sequoia budget must be an integer >= 2 (root included), got {budget!r}")
    acceptance = tuple(float(a) for a in acceptance)
    if not acceptance or any(not 0.0 <= a <= 1.0 for a in acceptance) or sum(acceptance) > 1.0001:
        raise ValueError(
            f"acceptance must be per-rank probabilities in [0, 1] summing to <= 1, got {acceptance}"
        )
    depth = budget - 1 if depth is None else depth
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"Sequoia depth must be an integer >= 1 or None, got {depth!r}")
    return acceptance, min(depth, budget - 1)


# ---- the policy ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sequoia(StaticShapePolicy):
    """The Sequoia-optimal static tree of `budget` nodes (root included) for `acceptance`.

    acceptance[r]: probability that a node's rank-r child is the accepted one (see
    `measure_acceptance`); its length bounds the children per node. children: "top" (ranked
    candidates) or "sample_without_replacement" (Gumbel-top-k draws, as in Sequoia's sampling
    mode); measure the vector with the same mode.
    """

    budget: int
    acceptance: tuple[float, ...]
    children: str = "top"
    depth: int | None = None  # deepest level allowed (None: whatever the DP prefers)

    def __post_init__(self):
        if self.children not in ("top", "sample_without_replacement"):
            raise ValueError(
                f"Sequoia children must be 'top' or 'sample_without_replacement', got "
                f"{self.children!r} (i.i.d. siblings break the positional acceptance model)"
            )
        acceptance, _ = _check(self.acceptance, self.budget, self.depth)
        object.__setattr__(self, "acceptance", acceptance)
        value, paths = optimal_tree(acceptance, self.budget, self.depth)
        object.__setattr__(self, "_topology", Topology.from_paths([list(p) for p in paths]))
        object.__setattr__(self, "_expected", value)

    @property
    def topology(self) -> Topology:
        return self._topology

    @property
    def expected_tokens(self) -> float:
        """Expected tokens per step (accepted drafts + bonus) the DP promises."""
        return self._expected


# ---- measuring the acceptance vector ------------------------------------------------------------


# ---- hardware-aware budget ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BudgetChoice:
    budget: int  # nodes, root included
    depth: int  # depth limit handed to Sequoia(depth=...)
    tokens_per_step: float  # the DP's expected tokens per step
    seconds_per_token: float  # (depth x draft level + verify) / tokens_per_step


def choose_budget(
    acceptance: Sequence[float],
    budgets: Sequence[int],
    draft_time: Callable[[int], float],
    verify_time: Callable[[int], float],
    max_depth: int | None = None,
) -> BudgetChoice:
    """The (budget, depth) minimising time per emitted token.

    draft_time(budget): seconds of one draft level (one drafter forward) for a tree of that budget;
    verify_time(budget): seconds of one target forward over that many nodes (plus the step's fixed
    work). A step of a depth-d tree costs d x draft_time + verify_time and emits f(budget, d).
    """
    best = None
    for budget in budgets:
        acc, depth = _check(acceptance, budget, max_depth)
        f, _, _ = _tables(acc, budget, depth)
        for d in range(1, depth + 1):
            tokens = _row(f, d)[budget]
            if not np.isfinite(tokens):
                continue
            seconds = (d * draft_time(budget) + verify_time(budget)) / tokens
            if best is None or seconds < best.seconds_per_token:
                best = BudgetChoice(budget, d, float(tokens), float(seconds))
    if best is None:
        raise ValueError(f"no budget in {list(budgets)} admits a tree for {acceptance}")
    return best
