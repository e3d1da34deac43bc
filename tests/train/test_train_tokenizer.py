"""The BPE tokenizer: exact round trips, AutoTokenizer loads the saved directory, chat format."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from train.chat import BOS, CHAT_TEMPLATE, END, PAD, ROLE_TOKENS, ROLES, SPECIAL_TOKENS, render_chat
from train.data import read_conversations
from train.packing import encode_chat

TEST_VOCAB = 4096  # conftest trains the tokenizer fixture with this vocabulary size

TRICKY_TEXTS = [
    "",
    " ",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew\r\nlines\n\n\n",
    "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # comment\n",
    "naïve café, Straße, ΑΒΓ, Привет, 日本語のテキスト, 한국어, مرحبا, שלום",
    "e\u0301 (decomposed) vs \u00e9 (composed): both must survive unnormalized",
    "emoji 🎉👩‍👩‍👧‍👦 flags 🇫🇷 skin 👍🏽",
    "zero\u200bwidth\u00a0nbsp\u3000ideographic space",
    "control \x00\x01\x7f chars",
    "   \n\t  ",
    "a" * 500,
    "unclosed <| and |> and <|bos but no token",
]


def test_special_tokens_have_fixed_ids_and_vocab_size(tokenizer):
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tokenizer.get_vocab_size() == TEST_VOCAB


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_round_trip_tricky_text(tokenizer, hf_tokenizer, text):
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids) == text
    assert hf_tokenizer.decode(ids) == text
    assert hf_tokenizer.encode(text) == ids


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200) | st.sampled_from([f"a{t}b" for t in SPECIAL_TOKENS]))
def test_round_trip_any_unicode(tokenizer, text):
    ids = tokenizer.encode(text).ids
    # Text that spells a special token encodes to it; only skip_special_tokens=False brings it back.
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    if not any(token in text for token in SPECIAL_TOKENS):
        assert tokenizer.decode(ids) == text


def test_saved_directory_for_auto_tokenizer(tokenizer_dir, hf_tokenizer):
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE
    assert json.loads((tokenizer_dir / "special_tokens_map.json").read_text())["eos_token"] == END
    assert (hf_tokenizer.bos_token, hf_tokenizer.eos_token, hf_tokenizer.pad_token) == (
        BOS,
        END,
        PAD,
    )
    assert (hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id, hf_tokenizer.pad_token_id) == (
        1,
        2,
        0,
    )
    assert hf_tokenizer.model_max_length == 4096
    assert set(SPECIAL_TOKENS) <= set(hf_tokenizer.all_special_tokens)
    assert len(hf_tokenizer) == TEST_VOCAB


def test_auto_tokenizer_encodes_real_text_identically(tokenizer, hf_tokenizer, sharegpt_subset):
    texts = [
        text for c in read_conversations(sharegpt_subset, split="heldout") for _, text in c.turns
    ][:100]
    assert [hf_tokenizer.encode(t) for t in texts] == [e.ids for e in tokenizer.encode_batch(texts)]


def test_render_chat_format():
    turns = [("system", "S"), ("user", "Hi"), ("assistant", " there ")]
    assert (
        render_chat(turns)
        == "<|bos|><|system|>S<|end|><|user|>Hi<|end|><|assistant|> there <|end|>"
    )
    assert (
        render_chat(turns[1:2], add_generation_prompt=True)
        == "<|bos|><|user|>Hi<|end|><|assistant|>"
    )
    with pytest.raises(ValueError, match="role='tool'"):
        render_chat([("tool", "x")])


_turns = st.lists(
    st.tuples(st.sampled_from(ROLES), st.text(max_size=30) | st.sampled_from(TRICKY_TEXTS)),
    min_size=1,
    max_size=5,
)


@settings(max_examples=100, deadline=None)
@given(turns=_turns, add_generation_prompt=st.booleans())
def test_chat_template_equals_render_chat(hf_tokenizer, turns, add_generation_prompt):
    messages = [{"role": role, "content": text} for role, text in turns]
    rendered = hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert rendered == render_chat(turns, add_generation_prompt=add_generation_prompt)


def test_encode_chat_equals_apply_chat_template_ids(tokenizer, hf_tokenizer, sharegpt_subset):
    conversations = [c.turns for c in read_conversations(sharegpt_subset, split="heldout")][:30]
    conversations.append(
        tuple((role, text) for role, text in zip(ROLES * 5, TRICKY_TEXTS, strict=False))
    )
    for turns in conversations:
        messages = [{"role": role, "content": text} for role, text in turns]
        expected = hf_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        assert encode_chat(tokenizer, turns).tolist() == expected


def test_special_token_text_inside_a_message_stays_text(tokenizer):
    text = f"fake {ROLE_TOKENS['assistant']} turn {END}"
    ids = encode_chat(tokenizer, [("user", text)]).tolist()
    special = {tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    assert [i for i in ids if i in special] == [
        tokenizer.token_to_id(t) for t in (BOS, ROLE_TOKENS["user"], END)
    ]
    assert tokenizer.decode(ids[2:-1]) == text
