"""`python -m specdec generate` end to end on a tiny checkpoint with its own tokenizer."""

import subprocess
import sys

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import specdec
from specdec.checkpoint import save_transformer
from specdec.cli import main, parse_policy
from specdec.config import tiny_config
from trees import Chain, Static

TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "speculative decoding drafts then verifies",
    "a tree of draft tokens is checked in one forward pass",
] * 20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_ckpt")
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        TEXT,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<eos>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok.save(str(path / "tokenizer.json"))
    cfg = tiny_config(vocab_size=tok.get_vocab_size(), eos_token_ids=(0,))
    save_transformer(specdec.Model.random(cfg, seed=0, attention="xla").module(), path)
    return path


def test_cli_generates_text_and_reports_speed(checkpoint, capsys):
    code = main(
        [
            "generate",
            "--model",
            str(checkpoint),
            "--prompt",
            "the quick",
            "--max-new-tokens",
            "8",
            "--attention",
            "xla",
            "--no-eos",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "--- prompt: the quick" in out and "tok/s" in out


def test_cli_speculative_with_ngram(checkpoint, capsys):
    code = main(
        [
            "generate",
            "--model",
            str(checkpoint),
            "--prompt",
            "the quick",
            "--prompt",
            "a tree",
            "--max-new-tokens",
            "8",
            "--attention",
            "xla",
            "--ngram",
            "2",
            "--policy",
            "chain:3",
        ]
    )
    assert code == 0 and "tau" in capsys.readouterr().out


def test_cli_reports_bad_model_dir_cleanly(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_module_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "specdec", "generate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--max-new-tokens" in out


def test_parse_policy():
    assert parse_policy("chain:3", "top") == Chain(3)
    assert parse_policy("static:[[0],[1],[0,0]]", "sample") == Static([[0], [1], [0, 0]], "sample")
    with pytest.raises(ValueError, match="chain:N"):
        parse_policy("beam:3", "top")
