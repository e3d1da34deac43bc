"""Tree policies: who decides the shape of each step's draft tree (implementations).

The interfaces (`Policy`, `Expander`, `DraftTree`, `ChildKind`) are defined once in the core,
`specdec.contract` and `specdec.tree`, and re-exported here for convenience.
"""

from specdec.contract import CHILDREN_MODES, Expander, Policy
from specdec.tree import ChildKind, DraftTree
from trees.adaptive import Adaptive
from trees.dynamic import Dynamic
from trees.measure import measure_acceptance, measure_step_times
from trees.policy import StaticShapePolicy, Topology
from trees.sequoia import BudgetChoice, Sequoia, choose_budget, optimal_tree
from trees.specexec import SpecExec
from trees.static import Chain, Static
from trees.stochastic_beam import StochasticBeam

__all__ = [
    "CHILDREN_MODES",
    "Adaptive",
    "BudgetChoice",
    "Chain",
    "ChildKind",
    "DraftTree",
    "Dynamic",
    "Expander",
    "Policy",
    "Sequoia",
    "SpecExec",
    "Static",
    "StaticShapePolicy",
    "StochasticBeam",
    "Topology",
    "choose_budget",
    "measure_acceptance",
    "measure_step_times",
    "optimal_tree",
]
