"""Losslessness by statistics: speculative samples follow the target's distribution, for every law.

A 4-token vocabulary target and a deliberately different (sharper) draft model; 20 000 sequences
generated in one batch; the joint distribution of the first 3 new tokens is compared with the exact
one (enumerated with full forwards) by a chi-square test. Correct laws must pass (p > 1e-3); the
same test must fail (p < 1e-6) when the verifier is handed a wrong law, which we do the way public
code does it by accident: drafts labelled with a kind of sampling they did not come from.
"""

import dataclasses

import jax.numpy as jnp
import pytest
from stats import stat_pvalue

import specdec
from drafters import DraftModel, NGram
from specdec.config import tiny_config
from trees import Chain, ChildKind, Static

VOCAB = 4  # prompt, length and sample count: stats.stat_pvalue
TREE = [[0], [1], [2], [0, 0], [1, 0]]
PASS, FAIL = 1e-3, 1e-6


def _model(seed: int, init: float) -> specdec.Model:
    cfg = tiny_config(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        initializer_range=init,
    )
    return specdec.Model.random(cfg, seed=seed, attention="xla")


@pytest.fixture(scope="module")
def pair():
    return _model(11, 0.8), _model(12, 1.5)


def _pvalue(target, drafter, policy, **sampling) -> tuple[float, float]:
    return stat_pvalue(target, drafter, policy, seed=1, **sampling)


# ---- correct laws ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy,sampling",
    [
        (Chain(2, "sample"), dict(temperature=1.0)),  # Leviathan / Chen chain
        (Static(TREE, "sample"), dict(temperature=1.0)),  # i.i.d. siblings (SpecInfer)
        (Static(TREE, "sample_without_replacement"), dict(temperature=1.0)),  # RSD Gumbel-top-k
        (Static(TREE, "top"), dict(temperature=1.0)),  # deterministic candidates (EAGLE / Medusa)
        (Static(TREE, "sample_without_replacement"), dict(temperature=0.7, top_k=3, top_p=0.9)),
        (Static(TREE, "sample"), dict(temperature=1.3, top_p=0.8)),
    ],
    ids=[
        "chain-sample",
        "iid",
        "without-replacement",
        "deterministic",
        "wor-topk-topp",
        "iid-topp",
    ],
)
def test_correct_law_preserves_target_distribution(pair, policy, sampling):
    target, draft = pair
    pvalue, tau = _pvalue(target, DraftModel(draft), policy, **sampling)
    assert pvalue > PASS, f"p={pvalue:.3g}"
    assert tau > 1.1  # drafts were actually accepted, so the law was exercised


def test_ngram_drafts_preserve_target_distribution(pair):
    target, _ = pair
    pvalue, _ = _pvalue(target, NGram(2), Chain(3), temperature=1.0)
    assert pvalue > PASS, f"p={pvalue:.3g}"


# ---- wrong laws: the same test must catch them ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RelabelledChildren(Static):
    """Drafts as its `children` mode says, then labels the children as `label` (the bug)."""

    label: int = ChildKind.DETERMINISTIC

    def build(self, expander, state, root, params, key, policy_state=()):
        tree, state = super().build(expander, state, root, params, key, policy_state)
        return dataclasses.replace(
            tree, child_kind=jnp.full_like(tree.child_kind, self.label)
        ), state


@dataclasses.dataclass(frozen=True)
class RankedButLabelledSampled(Static):
    """Takes the drafter's top-ranked tokens but keeps a sampled label and q (argmax drafts
    verified as if they were sampled)."""

    def _choose_children(self, tree, frontier, logits, q, greedy, key):
        return super()._choose_children(tree, frontier, logits, q, jnp.bool_(True), key)


@pytest.mark.parametrize(
    "policy",
    [
        RelabelledChildren(TREE, "sample_without_replacement", label=ChildKind.WITH_REPLACEMENT),
        RankedButLabelledSampled([[0], [0, 0]], "sample"),
        RankedButLabelledSampled(TREE, "sample"),
        RankedButLabelledSampled(TREE, "sample_without_replacement"),
    ],
    ids=[
        "without-replacement-verified-as-iid",
        "argmax-chain-verified-as-sampled",
        "ranked-tree-verified-as-iid",
        "ranked-tree-verified-as-without-replacement",
    ],
)
def test_wrong_law_is_detected(pair, policy):
    target, draft = pair
    pvalue, _ = _pvalue(target, DraftModel(draft), policy, temperature=1.0)
    assert pvalue < FAIL, f"the test did not catch a wrong law (p={pvalue:.3g})"


def test_deterministic_rule_is_exact_for_any_candidates(pair):
    """Point-mass recursive rejection does not care how candidates were picked (so it is a safe,
    if weaker, rule for sampled drafts too): i.i.d. drafts labelled deterministic stay exact."""
    target, draft = pair
    policy = RelabelledChildren(TREE, "sample", label=ChildKind.DETERMINISTIC)
    pvalue, _ = _pvalue(target, DraftModel(draft), policy, temperature=1.0)
    assert pvalue > PASS, f"p={pvalue:.3g}"
