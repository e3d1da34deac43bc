"""Unreadable checkpoint files raise ValueError naming the file, never a library's own error."""

import json
import re
import shutil

import numpy as np
import pytest

import specdec
from specdec.config import ModelConfig, tiny_config


@pytest.fixture
def ckpt(tmp_path, fixtures_dir):
    dst = tmp_path / "ckpt"
    shutil.copytree(fixtures_dir / "llama", dst)
    return dst


def _config(path) -> dict:
    return json.loads((path / "config.json").read_text())


@pytest.mark.parametrize(
    "contents",
    [b"", b"not a safetensors file" * 8, "truncated"],
    ids=["empty", "garbage", "truncated"],
)
def test_unreadable_safetensors_names_the_file(ckpt, contents):
    weights = ckpt / "model.safetensors"
    if contents == "truncated":
        contents = weights.read_bytes()[: weights.stat().st_size - 100]
    weights.write_bytes(contents)
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(weights))} is not a readable safetensors file"
    ):
        specdec.load(ckpt)


def test_truncated_shard_names_the_shard(tmp_path, fixtures_dir):
    dst = shutil.copytree(fixtures_dir / "llama_bf16_sharded", tmp_path / "sharded")
    shard = sorted(dst.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(shard))} is not a readable safetensors file"
    ):
        specdec.load(dst)


def test_invalid_shard_index_names_the_file(tmp_path, fixtures_dir):
    dst = shutil.copytree(fixtures_dir / "llama_bf16_sharded", tmp_path / "sharded")
    (dst / "model.safetensors.index.json").write_text("{")
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json is not valid JSON"):
        specdec.load(dst)


def test_config_that_is_not_json_names_the_file(ckpt):
    (ckpt / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(ckpt / 'config.json'))} is not valid JSON"
    ):
        specdec.load(ckpt)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hidden_size", "64"),
        ("num_attention_heads", 0),  # used as a divisor before the dataclass checks anything
        ("num_hidden_layers", True),
        ("num_key_value_heads", 2.0),
        ("max_position_embeddings", -1),
        ("eos_token_id", "</s>"),
        ("rope_scaling", "linear"),
    ],
)
def test_config_with_bad_values_names_the_file_and_field(ckpt, field, value):
    (ckpt / "config.json").write_text(json.dumps({**_config(ckpt), field: value}))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(ckpt / 'config.json'))}: .*{field}="):
        specdec.load(ckpt)


def test_config_that_is_not_an_object(ckpt):
    (ckpt / "config.json").write_text("[]")
    with pytest.raises(ValueError, match="must hold a JSON object, got list"):
        specdec.load(ckpt)


def test_model_path_that_is_a_file(ckpt):
    with pytest.raises(NotADirectoryError, match=r"is a file; a checkpoint is the directory"):
        specdec.load(ckpt / "config.json")


def test_corrupt_tokenizer_files_name_the_file(ckpt):
    (ckpt / "tokenizer.json").write_text("{")
    with pytest.raises(ValueError, match=r"tokenizer\.json is not a readable tokenizer\.json"):
        specdec.load(ckpt)


def test_model_config_checks_integer_fields():
    with pytest.raises(ValueError, match=r"hidden_size=64\.0 must be a positive integer"):
        tiny_config(hidden_size=64.0)
    with pytest.raises(ValueError, match="sliding_window=0"):
        tiny_config(sliding_window=0)
    assert tiny_config(vocab_size=np.int64(128)).vocab_size == 128  # numpy integers are integers
    assert ModelConfig.from_hf(tiny_config().to_hf()) == tiny_config()
