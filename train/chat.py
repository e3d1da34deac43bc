"""The chat format: special tokens, `render_chat`, and the same format as a Jinja `chat_template`.

One conversation renders as

    <|bos|><|user|>Hi!<|end|><|assistant|>Hello.<|end|>

i.e. `<|bos|>` once, then per turn its role token, the text verbatim (no stripping, no separator
whitespace: the special tokens already delimit turns) and `<|end|>`. A prompt for the model to
answer ends with `<|assistant|>` (`add_generation_prompt=True`). `<|end|>` doubles as the EOS
token, so generation stops at the end of the assistant's turn; packed training documents are
separated by the next document's `<|bos|>`.

The special-token strings are defined here once; the tokenizer (`train.tokenizer`) registers them in
this order, so their ids are 0..5 (`<|pad|>` = 0).
"""

from collections.abc import Iterable

PAD = "<|pad|>"
BOS = "<|bos|>"
END = "<|end|>"  # end of turn; also the EOS token
EOS = END
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
ROLES = tuple(ROLE_TOKENS)
# Registration order fixes the ids: pad = 0, bos = 1, end = 2, system = 3, user = 4, assistant = 5.
SPECIAL_TOKENS = (PAD, BOS, END, *ROLE_TOKENS.values())

Turn = tuple[str, str]  # (role, text), role in ROLES


def _check_role(role: str) -> str:
    if role not in ROLE_TOKENS:
        raise ValueError(f"{role=} is not one of {ROLES}")
    return role


def render_chat(turns: Iterable[Turn], *, add_generation_prompt: bool = False) -> str:
    """The conversation as one string in the format above (what `CHAT_TEMPLATE` renders)."""
    parts = [BOS]
    for role, text in turns:
        parts += [ROLE_TOKENS[_check_role(role)], text, END]
    if add_generation_prompt:
        parts.append(ROLE_TOKENS["assistant"])
    return "".join(parts)


# The same format for `transformers` (`tokenizer_config.json["chat_template"]`), taking HF messages
# `[{"role": ..., "content": ...}]`. Written on one line because transformers renders with
# trim_blocks/lstrip_blocks, and any literal whitespace here would end up in the prompt.
CHAT_TEMPLATE = "".join(
    [
        "{% set role_tokens = " + repr(ROLE_TOKENS) + " %}",
        BOS,
        "{% for message in messages %}",
        "{% if message['role'] not in role_tokens %}",
        "{{ raise_exception('unknown role ' + message['role']) }}",
        "{% endif %}",
        "{{ role_tokens[message['role']] + message['content'] + " + repr(END) + " }}",
        "{% endfor %}",
        "{% if add_generation_prompt %}{{ " + repr(ROLE_TOKENS["assistant"]) + " }}{% endif %}",
    ]
)
