"""A thin wrapper over a checkpoint's `tokenizer.json` (HF `tokenizers`, no transformers)."""

import hashlib
import json
import os
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer


class Tokenizer:
    """Encode/decode text with a checkpoint's tokenizer and know its special tokens."""

    def __init__(self, tokenizer: _HFTokenizer, eos_token_ids: tuple[int, ...] = ()):
        self._tok = tokenizer
        self.eos_token_ids = eos_token_ids
        vocab = json.dumps(sorted(tokenizer.get_vocab(with_added_tokens=True).items()))
        # Two tokenizers with the same token->id table tokenize identically for our purposes.
        self.fingerprint = hashlib.sha256(vocab.encode()).hexdigest()

    @staticmethod
    def from_dir(path: str | os.PathLike) -> "Tokenizer | None":
        """`<path>/tokenizer.json` if present (eos from tokenizer_config.json), else None."""
        directory = Path(path)
        file = directory / "tokenizer.json"
        if not file.is_file():
            return None
        tok = _HFTokenizer.from_file(str(file))
        eos: tuple[int, ...] = ()
        config_file = directory / "tokenizer_config.json"
        if config_file.is_file():
            with open(config_file) as f:
                token = json.load(f).get("eos_token")
            if isinstance(token, dict):
                token = token.get("content")
            if isinstance(token, str) and tok.token_to_id(token) is not None:
                eos = (tok.token_to_id(token),)
        return Tokenizer(tok, eos)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
