"""HF checkpoint loading: parity with transformers (see tests/fixtures/make_hf_fixtures.py)."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import HF_FIXTURES

import specdec
from specdec.checkpoint import save_transformer


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_logits_match_transformers(fixtures_dir, name):
    model = specdec.load(fixtures_dir / name, dtype="float32", attention="xla")
    ref = np.load(fixtures_dir / name / "reference.npz")
    logits = np.asarray(model.logits(ref["input_ids"]))
    assert logits.dtype == np.float32 and logits.shape == ref["logits"].shape
    assert np.abs(logits - ref["logits"]).max() <= 1e-4


@pytest.mark.parametrize("name", HF_FIXTURES)
def test_greedy_continuation_matches_transformers(fixtures_dir, name):
    model = specdec.load(fixtures_dir / name, dtype="float32", attention="xla")
    ref = np.load(fixtures_dir / name / "reference.npz")
    out = specdec.generate(model, ref["prompt"].tolist(), max_new_tokens=ref["greedy"].shape[1])
    np.testing.assert_array_equal(out.tokens, ref["greedy"])


def test_architectures_and_rope_are_read(fixtures_dir):
    cfg = specdec.load(fixtures_dir / "qwen3", attention="xla").config
    assert cfg.architecture == "Qwen3ForCausalLM" and cfg.qk_norm and cfg.head_dim == 32
    cfg = specdec.load(fixtures_dir / "qwen2", attention="xla").config
    assert cfg.attention_bias and cfg.tie_word_embeddings
    rope = specdec.load(fixtures_dir / "llama3_rope", attention="xla").config.rope
    assert (rope.kind, rope.factor, rope.original_max_position_embeddings) == ("llama3", 8.0, 64)


def test_dtype_defaults_to_stored_and_can_be_overridden(fixtures_dir):
    assert specdec.load(fixtures_dir / "llama_bf16_sharded", attention="xla").dtype == jnp.bfloat16
    assert specdec.load(fixtures_dir / "llama", attention="xla").dtype == jnp.float32
    assert (
        specdec.load(fixtures_dir / "llama", dtype=jnp.bfloat16, attention="xla").dtype
        == jnp.bfloat16
    )


def test_save_then_load_round_trip(tmp_path, llama):
    save_transformer(llama.module(), tmp_path)
    again = specdec.load(tmp_path, attention="xla")
    ids = np.arange(12, dtype=np.int32)[None] % 128
    np.testing.assert_array_equal(np.asarray(again.logits(ids)), np.asarray(llama.logits(ids)))


# ---- clear errors for bad checkpoints ---------------------------------------------------------


@pytest.fixture
def ckpt(tmp_path, fixtures_dir):
    dst = tmp_path / "ckpt"
    shutil.copytree(fixtures_dir / "llama", dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        specdec.load(tmp_path / "nope")


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        specdec.load(ckpt)


def test_missing_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no safetensors weights"):
        specdec.load(ckpt)


def test_missing_shard(tmp_path, fixtures_dir):
    dst = tmp_path / "sharded"
    shutil.copytree(fixtures_dir / "llama_bf16_sharded", dst)
    next(iter(sorted(dst.glob("model-*.safetensors")))).unlink()
    with pytest.raises(FileNotFoundError, match="shards listed"):
        specdec.load(dst)


def test_unsupported_architecture(ckpt):
    _edit_config(ckpt, architectures=["GPT2LMHeadModel"])
    with pytest.raises(ValueError, match="unsupported architecture 'GPT2LMHeadModel'"):
        specdec.load(ckpt)


def test_weights_do_not_match_config(ckpt):
    _edit_config(ckpt, intermediate_size=96)
    with pytest.raises(ValueError, match=r"mlp.gate_proj.weight.*\(128, 64\).*\(96, 64\)"):
        specdec.load(ckpt)


def test_config_claims_more_layers_than_weights(ckpt):
    _edit_config(ckpt, num_hidden_layers=3)
    with pytest.raises(ValueError, match=r"missing tensor 'model\.layers\.2"):
        specdec.load(ckpt)


def test_config_claims_tied_but_lm_head_present(ckpt):
    _edit_config(ckpt, tie_word_embeddings=True)
    with pytest.raises(ValueError, match=r"does not explain.*lm_head\.weight"):
        specdec.load(ckpt)


def test_unsupported_rope(ckpt):
    _edit_config(
        ckpt, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    )
    with pytest.raises(ValueError, match="unsupported rope type 'dynamic'"):
        specdec.load(ckpt)
