"""Tree policies: who decides the shape of each step's draft tree (implementations).

The interfaces (`Policy`, `Expander`, `DraftTree`, `ChildKind`) are defined once in the core,
`specdec.contract` and `specdec.tree`, and re-exported here for convenience.
"""

from specdec.contract import CHILDREN_MODES, Expander, Policy
from specdec.tree import ChildKind, DraftTree
from trees.adaptive import Adaptive
from trees.dynamic import Dynamic
from trees.policy import StaticShapePolicy, Topology
from trees.static import Chain, Static

__all__ = [
    "CHILDREN_MODES",
    "Adaptive",
    "Chain",
    "ChildKind",
    "DraftTree",
    "Dynamic",
    "Expander",
    "Policy",
    "Static",
    "StaticShapePolicy",
    "Topology",
]
