"""A thin wrapper over a checkpoint's `tokenizer.json` (HF `tokenizers`, no transformers).

Besides encode/decode it knows the checkpoint's special tokens and its chat template (the
`chat_template` of `tokenizer_config.json`, or a `chat_template.jinja` file beside it, which
takes priority as in transformers), rendered the way `transformers` renders it, so
`Tokenizer.apply_chat_template` and `AutoTokenizer.apply_chat_template(..., tokenize=False)` give
the same text.
"""

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.sandbox
from tokenizers import Tokenizer as _HFTokenizer

CHAT_TEMPLATE_FILE = "chat_template.jinja"
# The tokenizer_config.json fields transformers hands a chat template as variables (its
# `special_tokens_map`).
_SPECIAL_TOKEN_FIELDS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


class Tokenizer:
    """Encode/decode text with a checkpoint's tokenizer and know its special tokens."""

    def __init__(
        self,
        tokenizer: _HFTokenizer,
        eos_token_ids: tuple[int, ...] = (),
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
    ):
        self._tok = tokenizer
        self.eos_token_ids = eos_token_ids
        self.chat_template = chat_template  # Jinja source, or None: the checkpoint has none
        self.special_tokens = dict(special_tokens or {})  # e.g. {"bos_token": "<s>"}
        vocab = json.dumps(sorted(tokenizer.get_vocab(with_added_tokens=True).items()))
        # Two tokenizers with the same token->id table tokenize identically for our purposes.
        self.fingerprint = hashlib.sha256(vocab.encode()).hexdigest()

    @staticmethod
    def from_dir(path: str | os.PathLike) -> "Tokenizer | None":
        """`<path>/tokenizer.json` if present (eos, special tokens and chat template from
        tokenizer_config.json), else None. An unreadable file raises ValueError naming it."""
        directory = Path(path)
        file = directory / "tokenizer.json"
        if not file.is_file():
            return None
        try:
            tok = _HFTokenizer.from_file(str(file))
        except Exception as err:  # tokenizers raises a bare Exception for any malformed file
            raise ValueError(f"{file} is not a readable tokenizer.json: {err}") from err
        config = _read_tokenizer_config(directory / "tokenizer_config.json")
        special = {
            field: token
            for field in _SPECIAL_TOKEN_FIELDS
            if isinstance(token := _token_text(config.get(field)), str)
        }
        eos_id = tok.token_to_id(special["eos_token"]) if "eos_token" in special else None
        eos = () if eos_id is None else (eos_id,)
        template = config.get("chat_template")
        template_file = directory / CHAT_TEMPLATE_FILE
        if template_file.is_file():  # newer transformers save it beside, and it takes priority
            template = template_file.read_text(encoding="utf-8")
        if isinstance(template, list):  # the named-templates form: [{"name", "template"}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if template is not None and not isinstance(template, str):
            raise ValueError(
                f"{directory / 'tokenizer_config.json'}: chat_template must be a string, "
                f"got {type(template).__name__}"
            )
        return Tokenizer(tok, eos, chat_template=template, special_tokens=special)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        """The conversation `[{"role": ..., "content": ...}, ...]` rendered by the chat template.

        Same text as transformers' `apply_chat_template(messages, tokenize=False,
        add_generation_prompt=...)`. The text already holds the template's special tokens (BOS
        and the like), so encode it with `add_special_tokens=False`, as transformers does.
        """
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template (tokenizer_config.json)")
        return _compile(self.chat_template).render(
            messages=[dict(m) for m in messages],
            tools=None,  # transformers defines both; templates test `tools is not none`
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens,
        )

    def encode_chat(self, prompt: str) -> list[int]:
        """Token ids of one user turn followed by the assistant's generation prompt."""
        text = self.apply_chat_template([{"role": "user", "content": prompt}])
        return self.encode(text, add_special_tokens=False)


def _token_text(token) -> str | None:
    # tokenizer_config.json writes a token either as its text or as an AddedToken dict.
    return token.get("content") if isinstance(token, dict) else token


def _read_tokenizer_config(file: Path) -> dict:
    if not file.is_file():
        return {}
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(config).__name__}")
    return config


def _raise_exception(message: str):
    raise jinja2.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's own tojson escapes HTML characters; transformers' does not.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    """The environment transformers renders chat templates in (sandboxed, trim/lstrip blocks)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)
