"""Packing: exact shapes and contents, determinism, resume by skipping, data-parallel sharding."""

import itertools

import numpy as np
import pytest

from train.chat import BOS
from train.data import Conversation, read_conversations
from train.packing import (
    PackingConfig,
    encode_chat,
    pack_batches,
    pack_documents,
    tokenize_conversations,
)


@pytest.fixture(scope="module")
def conversations(sharegpt_subset):
    return list(itertools.islice(read_conversations(sharegpt_subset, split="train"), 60))


def _stream(tokenizer, conversations):
    return np.concatenate(list(tokenize_conversations(tokenizer, conversations, encode_batch=7)))


def test_documents_are_the_chat_encodings(tokenizer, conversations):
    docs = list(tokenize_conversations(tokenizer, conversations[:20], encode_batch=7))
    assert len(docs) == 20
    for doc, conversation in zip(docs, conversations[:20], strict=True):
        assert doc.dtype == np.int32 and doc[0] == tokenizer.token_to_id(BOS)
        np.testing.assert_array_equal(doc, encode_chat(tokenizer, conversation.turns))


def test_unshuffled_batches_are_exact_windows_of_the_token_stream(tokenizer, conversations):
    config = PackingConfig(batch_size=4, seq_len=64, shuffle_buffer=0)
    batches = list(pack_batches(tokenizer, conversations, config))
    stream = _stream(tokenizer, conversations)
    step = 4 * 64
    assert len(batches) == (len(stream) - 1) // step  # only the final partial batch is dropped
    for b, batch in enumerate(batches):
        assert batch.shape == (4, 65) and batch.dtype == np.int32
        for r in range(4):
            start = b * step + r * 64
            np.testing.assert_array_equal(batch[r], stream[start : start + 65])
    # Consecutive rows overlap by one token: each row's last input is the next row's first.
    assert all(batch[r, -1] == batch[r + 1, 0] for batch in batches for r in range(3))
    assert (stream == tokenizer.token_to_id(BOS)).sum() == len(conversations)


def test_long_documents_span_batches(tokenizer):
    long = Conversation("long", (("user", "word " * 3000), ("assistant", "ok")))
    config = PackingConfig(batch_size=2, seq_len=16, shuffle_buffer=0)
    batches = list(pack_batches(tokenizer, [long, long], config))
    stream = _stream(tokenizer, [long, long])
    flat = np.concatenate([b[:, :-1].reshape(-1) for b in batches])  # inputs in stream order
    np.testing.assert_array_equal(flat, stream[: len(flat)])


def test_shuffle_is_seeded(tokenizer, conversations):
    def run(seed):
        config = PackingConfig(batch_size=2, seq_len=128, seed=seed, shuffle_buffer=20)
        return np.stack(list(itertools.islice(pack_batches(tokenizer, conversations, config), 10)))

    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    unshuffled = list(
        itertools.islice(pack_batches(tokenizer, conversations, PackingConfig(2, 128)), 10)
    )
    assert not np.array_equal(a, np.stack(unshuffled))


def test_skip_batches_resumes_at_the_same_batch(tokenizer, conversations):
    config = PackingConfig(batch_size=2, seq_len=256, seed=3, shuffle_buffer=20)
    full = list(pack_batches(tokenizer, conversations, config))
    for skip in (0, 1, 7, len(full) - 1):
        resumed = list(pack_batches(tokenizer, conversations, config, skip_batches=skip))
        assert len(resumed) == len(full) - skip
        np.testing.assert_array_equal(np.stack(resumed), np.stack(full[skip:]))
    assert list(pack_batches(tokenizer, conversations, config, skip_batches=len(full))) == []


def test_process_shards_tile_the_global_batch(tokenizer, conversations):
    global_config = PackingConfig(batch_size=6, seq_len=32, seed=5, shuffle_buffer=20)
    full = list(itertools.islice(pack_batches(tokenizer, conversations, global_config), 5))
    shards = []
    for index in range(3):
        config = PackingConfig(
            batch_size=6,
            seq_len=32,
            seed=5,
            shuffle_buffer=20,
            process_index=index,
            process_count=3,
        )
        assert config.local_batch_size == 2
        shards.append(list(itertools.islice(pack_batches(tokenizer, conversations, config), 5)))
    for b in range(5):
        assert all(shards[i][b].shape == (2, 33) for i in range(3))
        np.testing.assert_array_equal(np.concatenate([shards[i][b] for i in range(3)]), full[b])


def test_pack_documents_on_hand_made_documents():
    docs = [np.arange(10, dtype=np.int32), np.arange(100, 105, dtype=np.int32)]  # 15 tokens
    batches = list(pack_documents(docs, PackingConfig(batch_size=2, seq_len=3)))
    # step = 6 tokens per batch, each batch needs 7: two batches from 15 tokens.
    np.testing.assert_array_equal(batches[0], [[0, 1, 2, 3], [3, 4, 5, 6]])
    np.testing.assert_array_equal(batches[1], [[6, 7, 8, 9], [9, 100, 101, 102]])
    assert len(batches) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch_size=0, seq_len=8), "batch_size"),
        (dict(batch_size=4, seq_len=8, process_count=3), "multiple"),
        (dict(batch_size=4, seq_len=8, process_index=2, process_count=2), "process_index"),
        (dict(batch_size=4, seq_len=8, shuffle_buffer=-1), "shuffle_buffer"),
    ],
)
def test_config_errors_name_the_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PackingConfig(**kwargs)
