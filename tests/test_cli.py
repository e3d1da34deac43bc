"""`specdec generate` end to end: chat template, clean errors, and the tiny reference pair."""

import json
import shutil
import subprocess
import sys

import pytest
from tokenizers import trainers

import specdec
from drafters import Eagle, EarlyExit, QuantSpec
from specdec.checkpoint import save_transformer
from specdec.cli import main, parse_policy
from specdec.config import tiny_config
from specdec.tokenizer import Tokenizer
from train.chat import SPECIAL_TOKENS, render_chat
from train.reference import reference_pair
from train.tokenizer import new_tokenizer, save_tokenizer
from trees import Adaptive, Chain, Dynamic, Sequoia, SpecExec, Static, StochasticBeam

TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "speculative decoding drafts then verifies",
    "a tree of draft tokens is checked in one forward pass",
] * 20
MAX_POSITIONS = 256  # the test checkpoint's max_position_embeddings


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random tiny model saved the way train.export saves one: the tokenizer files carry the
    chat template in HF form (tokenizer_config.json `chat_template`)."""
    path = tmp_path_factory.mktemp("cli_ckpt")
    tok = new_tokenizer()
    tok.train_from_iterator(
        TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=list(SPECIAL_TOKENS))
    )
    save_tokenizer(tok, path, model_max_length=MAX_POSITIONS)
    cfg = tiny_config(
        vocab_size=tok.get_vocab_size(), eos_token_ids=(2,), max_position_embeddings=MAX_POSITIONS
    )
    save_transformer(specdec.Model.random(cfg, seed=0, attention="xla").module(), path)
    return path


@pytest.fixture
def copy(checkpoint, tmp_path):
    """A private copy of the checkpoint for a test to break."""
    return shutil.copytree(checkpoint, tmp_path / "ckpt")


@pytest.fixture
def generate_calls(monkeypatch):
    """The keyword arguments and input ids of every specdec.generate call the CLI makes."""
    calls, real = [], specdec.generate

    def spy(model, input_ids, **kwargs):
        calls.append((input_ids, kwargs))
        return real(model, input_ids, **kwargs)

    monkeypatch.setattr(specdec, "generate", spy)
    return calls


def generate(*args: str) -> int:
    return main(["generate", "--attention", "xla", *args])


def test_cli_generates_text_and_reports_speed(checkpoint, capsys):
    code = generate("--model", str(checkpoint), "--prompt", "the quick", "--max-new-tokens", "8")
    out = capsys.readouterr().out
    assert code == 0
    assert "--- prompt: the quick" in out and "tok/s" in out


def test_cli_speculative_with_ngram(checkpoint, capsys):
    prompts = ("--prompt", "the quick", "--prompt", "a tree")
    args = ("--max-new-tokens", "8", "--ngram", "2", "--policy", "chain:3")
    code = generate("--model", str(checkpoint), *prompts, *args)
    assert code == 0 and "tau" in capsys.readouterr().out


# ---- the chat template ------------------------------------------------------------------------


def test_chat_template_renders_like_transformers(checkpoint):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(checkpoint)
    ours = Tokenizer.from_dir(checkpoint)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " the quick\n  brown fox "},
    ]
    text = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ours.apply_chat_template(messages) == text
    assert text == render_chat(
        [("system", "Be brief."), ("user", " the quick\n  brown fox ")], add_generation_prompt=True
    )
    hf_ids = hf.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert ours.encode(text, add_special_tokens=False) == hf_ids


def test_template_environment_matches_transformers(copy):
    """A template laid out over several lines, using special-token variables, loop controls,
    tojson and raise_exception: the Jinja settings (trim/lstrip blocks, globals) must match."""
    from transformers import AutoTokenizer

    template = (
        "{{ bos_token }}\n"
        "{% for message in messages %}\n"
        "  {% if message['role'] == 'system' %}{% continue %}{% endif %}\n"
        "  {% if message['role'] not in ['user', 'assistant'] %}\n"
        "    {{ raise_exception('bad role') }}\n"
        "  {% endif %}\n"
        "<|{{ message['role'] }}|>{{ message['content'] | tojson }}{{ eos_token }}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    config_file = copy / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "chat_template": template}))
    hf, ours = AutoTokenizer.from_pretrained(copy), Tokenizer.from_dir(copy)
    messages = [
        {"role": "system", "content": "hidden"},
        {"role": "user", "content": 'say "hé" <b>'},
        {"role": "assistant", "content": "ok"},
    ]
    for add in (True, False):
        want = hf.apply_chat_template(messages, add_generation_prompt=add, tokenize=False)
        assert ours.apply_chat_template(messages, add_generation_prompt=add) == want


def test_chat_template_file_takes_priority_as_in_transformers(copy):
    from transformers import AutoTokenizer

    (copy / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[0]['content'] }}|")
    messages = [{"role": "user", "content": "the fox"}]
    want = AutoTokenizer.from_pretrained(copy).apply_chat_template(messages, tokenize=False)
    assert Tokenizer.from_dir(copy).apply_chat_template(messages) == want == "<|bos|>the fox|"


def test_cli_sends_prompts_through_the_chat_template(checkpoint, generate_calls, capsys):
    assert generate("--model", str(checkpoint), "--prompt", "the fox", "--max-new-tokens", "4") == 0
    tokenizer = Tokenizer.from_dir(checkpoint)
    chat = render_chat([("user", "the fox")], add_generation_prompt=True)
    assert generate_calls[0][0] == [tokenizer.encode(chat, add_special_tokens=False)]
    assert "note:" not in capsys.readouterr().err


def test_cli_raw_sends_prompts_as_they_are(checkpoint, generate_calls):
    args = ("--model", str(checkpoint), "--prompt", "the fox", "--max-new-tokens", "4", "--raw")
    assert generate(*args) == 0
    assert generate_calls[0][0] == [Tokenizer.from_dir(checkpoint).encode("the fox")]


def test_cli_without_chat_template_sends_raw_and_says_so(copy, generate_calls, capsys):
    config_file = copy / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    del config["chat_template"]
    config_file.write_text(json.dumps(config))
    assert generate("--model", str(copy), "--prompt", "the fox", "--max-new-tokens", "4") == 0
    assert generate_calls[0][0] == [Tokenizer.from_dir(copy).encode("the fox")]
    assert "has no chat template" in capsys.readouterr().err


def test_a_question_gets_an_answer_from_the_tiny_reference_pair(capsys):
    """Sent raw, a question made the tiny target print only blank lines; as a chat turn it
    answers (roughly: see the demo)."""
    target_dir, _ = reference_pair("tiny")
    question = "What is the capital of France?"
    assert generate("--model", str(target_dir), "--prompt", question, "--max-new-tokens", "16") == 0
    answer = capsys.readouterr().out.split(f"--- prompt: {question}\n")[1].split("\n--- ")[0]
    assert answer.strip(), f"only whitespace came back: {answer!r}"


# ---- every bad input: one `error:` line, exit status 2 ------------------------------------------


def _truncate_weights(path):
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return "model.safetensors"


def _corrupt_weights(path):
    (path / "model.safetensors").write_bytes(b"not a safetensors file" * 8)
    return "model.safetensors"


def _invalid_config_json(path):
    (path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    return "config.json"


def _config_with_a_string_size(path):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "num_attention_heads": "4"}))
    return "num_attention_heads"


def _corrupt_tokenizer(path):
    (path / "tokenizer.json").write_text("{")
    return "tokenizer.json"


@pytest.mark.parametrize(
    "break_checkpoint",
    [
        _truncate_weights,
        _corrupt_weights,
        _invalid_config_json,
        _config_with_a_string_size,
        _corrupt_tokenizer,
    ],
)
def test_broken_checkpoint_is_one_error_line_naming_the_file(copy, break_checkpoint, capsys):
    named = break_checkpoint(copy)
    assert generate("--model", str(copy), "--prompt", "x") == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and err.splitlines()[-1].startswith("error: ")
    assert named in err and str(copy) in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dtype", "float8"], "invalid choice: 'float8'"),
        (["--policy", "chain:3"], "--policy shapes speculative drafts: it needs"),
        (["--children", "sample"], "--children shapes speculative drafts: it needs"),
        (["--ngram", "2", "--policy", "tree:3"], "--policy must be one of chain:N"),
        (["--ngram", "2", "--policy", "beam:3"], "beam:WIDTH,DEPTH needs 2 comma-separated"),
        (["--ngram", "2", "--policy", "sequoia:16"], "needs the per-rank acceptance vector"),
        (["--ngram", "2", "--policy", "dynamic", "--children", "sample"], "ranked children"),
        (["--ngram", "2", "--draft-model", "x"], "choose one drafter, got --draft-model and"),
        (["--early-exit", "1", "--quantspec"], "--early-exit and --quantspec"),
        (["--kv-cache", "int4"], "invalid choice: 'int4'"),
        (["--int4-draft-weights"], "it needs --quantspec"),
        (["--quantspec", "--int4-draft-weights", "48"], "not a multiple of group=48"),
        (["--steps-per-sync", "0"], "steps_per_sync"),
        (["--max-new-tokens", "0"], "max_new_tokens"),
        (["--top-p", "0"], "top_p"),
        (["--attention", "bogus"], "attention='bogus'"),
        (["--max-new-tokens", str(MAX_POSITIONS)], "--allow-beyond-max-position"),
    ],
)
def test_bad_arguments_are_one_error_line(checkpoint, args, message, capsys):
    assert generate("--model", str(checkpoint), "--prompt", "the fox", *args) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and err.splitlines()[-1].startswith("error: ")
    assert message in err.splitlines()[-1]


def test_model_pointing_at_a_file(checkpoint, capsys):
    assert generate("--model", str(checkpoint / "config.json"), "--prompt", "x") == 2
    assert f"{str(checkpoint / 'config.json')!r} is a file" in capsys.readouterr().err


def test_missing_model_dir(tmp_path, capsys):
    assert generate("--model", str(tmp_path / "missing"), "--prompt", "x") == 2
    assert "does not exist" in capsys.readouterr().err


def test_too_long_generation_names_the_limit(checkpoint, capsys):
    args = ("--model", str(checkpoint), "--prompt", "the fox", "--max-new-tokens", "300")
    assert generate(*args) == 2
    err = capsys.readouterr().err
    assert f"max_position_embeddings={MAX_POSITIONS}" in err and "--max-new-tokens 300" in err


def test_allow_beyond_max_position_generates_past_the_limit(checkpoint, generate_calls, capsys):
    args = ("--model", str(checkpoint), "--prompt", "the fox", "--max-new-tokens", "300")
    assert generate(*args, "--allow-beyond-max-position", "--no-eos") == 0
    assert generate_calls[0][1]["allow_beyond_max_position"] is True
    assert "300 tokens" in capsys.readouterr().out


def test_within_the_limit_the_api_default_is_kept(checkpoint, generate_calls):
    assert generate("--model", str(checkpoint), "--prompt", "the fox", "--max-new-tokens", "4") == 0
    assert "allow_beyond_max_position" not in generate_calls[0][1]


def test_no_traceback_from_a_real_process(copy):
    """The installed entry point, not just main(): a corrupt checkpoint ends in one line."""
    _truncate_weights(copy)
    run = subprocess.run(
        [sys.executable, "-m", "specdec", "generate", "--model", str(copy), "--prompt", "x"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:]
    assert f"error: {copy / 'model.safetensors'} is not a readable safetensors file" in lines[-1]


def test_module_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "specdec", "generate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--max-new-tokens" in out and "--raw" in out


def test_parse_policy():
    assert parse_policy("chain:3", "top") == Chain(3)
    assert parse_policy("chain:3") == Chain(3)
    assert parse_policy("static:[[0],[1],[0,0]]", "sample") == Static([[0], [1], [0, 0]], "sample")
    assert parse_policy("dynamic") == Dynamic()
    assert parse_policy("dynamic:4,3,10") == Dynamic(depth=4, top_k=3, total_tokens=10)
    assert parse_policy("sequoia:8:0.7,0.2", "sample_without_replacement") == Sequoia(
        8, (0.7, 0.2), "sample_without_replacement"
    )
    assert parse_policy("specexec:64") == SpecExec(budget=64)
    assert parse_policy("beam:2,3") == StochasticBeam(width=2, depth=3)
    assert parse_policy("adaptive:5") == Adaptive(depth=5)
    assert parse_policy("adaptive:5,confidence", "sample") == Adaptive(
        depth=5, method="confidence", children="sample"
    )
    for bad, words in (("beam:3", "beam:WIDTH,DEPTH"), ("chain:x", "chain:N"), ("x", "one of")):
        with pytest.raises(ValueError, match=words):
            parse_policy(bad, "top")


@pytest.mark.parametrize(
    ("args", "drafter", "policy", "kv_cache"),
    [
        (["--early-exit", "1", "--policy", "adaptive:3"], EarlyExit(1), Adaptive(3), None),
        (["--quantspec", "--policy", "chain:2"], QuantSpec(), Chain(2), "int8-hierarchical"),
        (["--early-exit", "1", "--children", "sample"], EarlyExit(1), Chain(4, "sample"), None),
        (["--ngram", "2", "--policy", "dynamic:3,2,6", "--steps-per-sync", "4"], None,
         Dynamic(3, 2, 6), None),
        (["--kv-cache", "int8-hierarchical"], None, None, "int8-hierarchical"),
    ],
)  # fmt: skip
def test_cli_drafters_policies_and_cache_options(
    checkpoint, generate_calls, capsys, args, drafter, policy, kv_cache
):
    prompt = ("--model", str(checkpoint), "--prompt", "the quick", "--max-new-tokens", "6")
    assert generate(*prompt, *args) == 0, capsys.readouterr().err
    (_, kwargs), out = generate_calls[0], capsys.readouterr().out
    assert kwargs["policy"] == policy and kwargs["kv_cache"] == kv_cache
    if drafter is not None:
        assert kwargs["drafter"] == drafter
    assert kwargs["steps_per_sync"] == (4 if "--steps-per-sync" in args else 1)
    assert "tok/s" in out


def test_cli_quantspec_with_int4_draft_weights(checkpoint, generate_calls, capsys):
    args = ("--model", str(checkpoint), "--prompt", "the quick", "--max-new-tokens", "6")
    assert generate(*args, "--quantspec", "--int4-draft-weights", "16") == 0
    drafter = generate_calls[0][1]["drafter"]
    assert isinstance(drafter, QuantSpec) and drafter.weights
    assert {w.group for w in drafter.weights.values()} == {16}


def test_cli_eagle_head(checkpoint, tmp_path, generate_calls, capsys):
    model = specdec.load(checkpoint, attention="xla")
    Eagle.random(model, version=3, seed=0, draft_vocab=64).save(tmp_path / "head")
    args = ("--model", str(checkpoint), "--prompt", "the quick", "--max-new-tokens", "6")
    assert generate(*args, "--eagle", str(tmp_path / "head"), "--policy", "dynamic:3,2,6") == 0
    kwargs = generate_calls[0][1]
    assert isinstance(kwargs["drafter"], Eagle) and kwargs["drafter"].version == 3
    assert "tau" in capsys.readouterr().out
