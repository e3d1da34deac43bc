"""Drafters: who proposes the draft tree (draft LM, n-gram; EAGLE heads later)."""

from drafters.base import DraftContext, Drafter
from drafters.draft_model import DraftModel
from drafters.ngram import NGram

__all__ = ["DraftContext", "DraftModel", "Drafter", "NGram"]
