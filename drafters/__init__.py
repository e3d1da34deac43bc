"""Drafters: who proposes the draft tree (implementations of `specdec.contract.Drafter`).

The interface (`Drafter`, `DraftContext`, `Expander`, ...) is defined once in `specdec.contract`
and re-exported here for convenience.
"""

from drafters.draft_model import DraftModel
from drafters.eagle import Eagle
from drafters.early_exit import EarlyExit
from drafters.ngram import NGram
from drafters.quantspec import QuantSpec
from specdec.contract import DraftContext, Drafter, PrefillInputs, StepOutcome, TargetFeatures

__all__ = [
    "DraftContext",
    "DraftModel",
    "Drafter",
    "Eagle",
    "EarlyExit",
    "NGram",
    "PrefillInputs",
    "QuantSpec",
    "StepOutcome",
    "TargetFeatures",
]
