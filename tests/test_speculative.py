"""Speculative decoding: greedy equality with plain decoding, hand-drawn verification, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

import specdec
from drafters import DraftContext, DraftModel, NGram
from specdec.config import tiny_config
from specdec.sampling import SamplingParams
from specdec.tokenizer import Tokenizer
from specdec.verify import verify
from trees import Chain, ChildKind, DraftTree, Static

TREE = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 0, 0]]
PROMPTS = [[5, 17, 3, 99, 42, 8, 1], [64, 2, 2], [7, 8, 9, 7, 8, 9, 7, 8]]


@pytest.fixture(scope="module")
def plain(llama):
    return {
        b: specdec.generate(
            llama, PROMPTS[:b] if b > 1 else PROMPTS[2:], max_new_tokens=20, eos_token_id=None
        )
        for b in (1, 3)
    }


def _prompts(batch):
    return PROMPTS if batch == 3 else PROMPTS[2:]


@pytest.mark.parametrize(
    "drafter_name,policy,batch",
    [
        ("tiny", Chain(4), 1),
        ("tiny", Chain(4), 3),
        ("tiny", Static(TREE), 3),
        ("tiny", Static(TREE, "sample"), 3),  # sampled modes fall back to ranked at temperature 0
        ("tiny", Static(TREE, "sample_without_replacement"), 1),
        ("self", Chain(3), 3),  # the target drafting for itself: everything is accepted
        ("self", Static(TREE), 3),
        ("ngram", Chain(4), 3),
        ("ngram", Static(TREE), 1),
    ],
)
def test_greedy_speculative_equals_plain(llama, tiny_draft, plain, drafter_name, policy, batch):
    drafter = {
        "tiny": lambda: DraftModel(tiny_draft),
        "self": lambda: DraftModel(llama),
        "ngram": lambda: NGram(3),
    }[drafter_name]()
    out = specdec.generate(
        llama, _prompts(batch), max_new_tokens=20, drafter=drafter, policy=policy
    )
    np.testing.assert_array_equal(out.tokens, plain[batch].tokens)
    np.testing.assert_array_equal(out.lengths, plain[batch].lengths)
    if drafter_name == "self":
        # Every draft is accepted: blocks of depth + 1 tokens, the last one cut by max_new_tokens
        # (19 tokens after the prefill token); tau counts only what was emitted.
        block = policy.max_depth + 1
        assert out.stats.tau == pytest.approx(19 / -(-19 // block))
        assert all(a == 1.0 for a in out.stats.acceptance_by_depth[: policy.max_depth])


def test_eos_inside_an_accepted_block(llama):
    """Self-drafting accepts whole chains, so EOS lands mid-block; output must stop right there."""
    free = specdec.generate(llama, PROMPTS, max_new_tokens=20)
    eos = int(free.tokens[0, 6])
    plain = specdec.generate(llama, PROMPTS, max_new_tokens=20, eos_token_id=eos)
    spec = specdec.generate(
        llama,
        PROMPTS,
        max_new_tokens=20,
        eos_token_id=eos,
        drafter=DraftModel(llama),
        policy=Chain(4),
    )
    np.testing.assert_array_equal(spec.tokens, plain.tokens)
    np.testing.assert_array_equal(spec.lengths, plain.lengths)
    assert spec.lengths[0] <= 7


def test_stats_count_the_bonus_token(llama):
    out = specdec.generate(
        llama, PROMPTS, max_new_tokens=17, drafter=DraftModel(llama), policy=Chain(3)
    )
    s = out.stats
    # 16 tokens after the prefill token, 4 per forward (3 drafts + bonus) -> 4 forwards per sequence
    assert s.target_forwards == 4 and s.tau == 4.0
    assert s.accepted_length_histogram == (0, 0, 0, 12)


# ---- verification on hand-drawn trees ---------------------------------------------------------


def _tree(tokens, parents, kind=ChildKind.DETERMINISTIC, q=None):
    tokens = jnp.asarray([tokens], jnp.int32)
    parents = jnp.asarray([parents], jnp.int32)
    depths = np.zeros(tokens.shape[1], np.int32)
    for i, p in enumerate(parents[0].tolist()):
        depths[i] = 0 if p < 0 else depths[p] + 1
    return DraftTree(
        tokens=tokens,
        parents=parents,
        depths=jnp.asarray(depths)[None],
        valid=jnp.ones(tokens.shape, bool),
        child_kind=jnp.full(tokens.shape, int(kind)),
        draft_probs=q,
    )


def _logits_preferring(choices, vocab=6):
    """Row i's argmax is choices[i]."""
    return jnp.asarray([[5.0 if v == c else 0.0 for v in range(vocab)] for c in choices])[None]


def test_greedy_walk_takes_the_matching_branch():
    #        0(root)
    #      /   |    \
    #    1:a  2:b  3:c          target argmax after root: b
    #    |     |
    #   4:d   5:e                argmax after b: e; argmax after e: a (bonus)
    tree = _tree([9, 0, 1, 2, 3, 4], [-1, 0, 0, 0, 1, 2])
    logits = _logits_preferring([1, 3, 4, 5, 5, 0])
    v = verify(tree, logits, SamplingParams.create(0.0), jax.random.key(0))
    assert v.num_accepted.tolist() == [2] and v.path[0, :3].tolist() == [0, 2, 5]
    assert v.bonus.tolist() == [0]
    assert v.emitted(tree)[0, :3].tolist() == [1, 4, 0]


def test_rejecting_every_child_samples_from_the_residual():
    """Deterministic rule: a rejected candidate is removed from p, so the bonus can never be it."""
    tree = _tree([9, 2], [-1, 0])
    logits = jnp.log(jnp.asarray([[[0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3]]]))
    keys = jax.random.split(jax.random.key(0), 4000)
    out = jax.vmap(lambda k: verify(tree, logits, SamplingParams.create(1.0), k))(keys)
    accepted = np.asarray(out.num_accepted)[:, 0] == 1
    assert abs(accepted.mean() - 0.2) < 0.03
    bonus = np.asarray(out.bonus)[~accepted, 0]
    assert 2 not in bonus
    assert abs((bonus == 0).mean() - 0.5 / 0.8) < 0.03


# ---- property tests on random trees --------------------------------------------------------------


def test_drafter_context_ngram_proposes_the_repeated_continuation():
    history = jnp.asarray([[1, 2, 3, 4, 1, 2, 3, 0, 0]], jnp.int32)
    ctx = DraftContext(history=history, hist_len=jnp.asarray([7]), vocab_size=8)
    expander = NGram(3).expander(ctx, Chain(3))
    logits, _ = expander.root(())
    assert int(jnp.argmax(logits[0])) == 4
    tree, _ = Chain(3).build(
        expander, (), history[:, 6], SamplingParams.create(0.0), jax.random.key(0)
    )
    assert tree.tokens[0].tolist() == [3, 4, 1, 2]
    assert tree.valid[0].tolist() == [True] * 4


def test_ngram_without_a_match_proposes_nothing():
    history = jnp.asarray([[1, 2, 3, 4, 5, 6]], jnp.int32)
    ctx = DraftContext(history=history, hist_len=jnp.asarray([6]), vocab_size=8)
    tree, _ = Chain(2).build(
        NGram(2).expander(ctx, Chain(2)),
        (),
        history[:, 5],
        SamplingParams.create(0.0),
        jax.random.key(0),
    )
    assert tree.valid[0].tolist() == [True, False, False]


# ---- bad input ---------------------------------------------------------------------------------


def _with_tokenizer(model, words):
    tok = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    return specdec.Model(model.module(), Tokenizer(tok))


def test_vocabulary_mismatch_is_rejected(llama):
    other = specdec.Model.random(tiny_config(vocab_size=100), attention="xla")
    with pytest.raises(ValueError, match="vocabulary size 100 != target vocabulary size 128"):
        specdec.generate(llama, [[1, 2]], max_new_tokens=4, drafter=DraftModel(other))


def test_tokenizer_mismatch_is_rejected(llama, tiny_draft):
    target = _with_tokenizer(llama, [f"t{i}" for i in range(128)])
    draft = _with_tokenizer(tiny_draft, [f"u{i}" for i in range(128)])
    with pytest.raises(ValueError, match="different tokenizers"):
        specdec.generate(target, [[1, 2]], max_new_tokens=4, drafter=DraftModel(draft))


def test_tree_larger_than_cache_room_is_rejected(llama):
    with pytest.raises(ValueError, match=r"draft tree 9\) but max_cache_len is 20"):
        specdec.generate(
            llama,
            [[1, 2, 3]],
            max_new_tokens=10,
            drafter=NGram(),
            policy=Static(TREE),
            max_cache_len=20,
        )


def test_policy_the_drafter_cannot_serve(llama):
    with pytest.raises(ValueError, match=r"NGram cannot serve a policy with children='sample'"):
        specdec.generate(
            llama, [[1, 2]], max_new_tokens=4, drafter=NGram(), policy=Chain(2, "sample")
        )


def test_bad_policies():
    with pytest.raises(ValueError, match="no parent path"):
        Static([[0], [0, 0, 0]])
    with pytest.raises(ValueError, match="elder sibling"):
        Static([[0], [2]])
    with pytest.raises(ValueError, match="distinct"):
        Static([[0], [0]])
    with pytest.raises(ValueError, match="ranks must be integers"):
        Static([[0], [-1]])
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        Chain(0)
    with pytest.raises(ValueError, match="children='beam'"):
        Static([[0]], "beam")
    with pytest.raises(ValueError, match="one child per node"):
        Chain(3, "sample_without_replacement")


def test_drafter_and_model_types_are_checked(llama):
    with pytest.raises(TypeError, match="drafter must be"):
        specdec.generate(llama, [[1]], max_new_tokens=2, drafter="ngram")
    with pytest.raises(TypeError, match=r"DraftModel takes a specdec\.Model"):
        DraftModel("small.ckpt")


def test_speculative_loop_does_not_recompile(llama, tiny_draft):
    """Prompts within a bucket, seeds and sampling values reuse the compiled speculative loop."""
    from test_generate import _CompileCounter

    from specdec.engine.generate import compile_count

    drafter, policy = DraftModel(tiny_draft), Static(TREE, "sample_without_replacement")
    for sampling in (dict(), dict(temperature=1.0, top_k=2)):  # a compile per mode used below
        specdec.generate(
            llama, [[1, 2, 3], [4, 5]], max_new_tokens=10, drafter=drafter, policy=policy,
            **sampling,
        )  # fmt: skip
    before = compile_count()
    with _CompileCounter() as counter:
        for i, sampling in enumerate(
            [dict(), dict(temperature=0.9, top_p=0.8), dict(temperature=1.4, top_k=7, seed=99)]
        ):
            specdec.generate(
                llama,
                [[9] * (3 + i), [1, 7, 7][: i + 1]],
                max_new_tokens=12 + i,
                drafter=DraftModel(tiny_draft),
                policy=policy,
                **sampling,
            )
    assert counter.count == 0 and compile_count() == before
