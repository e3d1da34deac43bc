"""Draft trees and the policies that shape them."""

from trees.policy import CHILDREN_MODES, Expander, Policy, StaticShapePolicy, Topology
from trees.static import Chain, Static
from trees.tree import ChildKind, DraftTree

__all__ = [
    "CHILDREN_MODES",
    "Chain",
    "ChildKind",
    "DraftTree",
    "Expander",
    "Policy",
    "Static",
    "StaticShapePolicy",
    "Topology",
]
