"""A byte-level BPE tokenizer trained on the ShareGPT train split, saved for `AutoTokenizer`.

Byte-level: text is split with GPT-2's pre-tokenizer regex and every UTF-8 byte is in the base
alphabet, so any string encodes without an unknown token, and there is no normalizer, so
`decode(encode(text)) == text` exactly (for text that does not itself spell a special token).
The special tokens of `train.chat` get ids 0..5 (pad, bos, end, system, user, assistant).

A saved directory holds `tokenizer.json` (the `tokenizers` pipeline), `tokenizer_config.json` (bos /
eos / pad, the chat template, model_max_length) and `special_tokens_map.json`, which is what
`transformers.AutoTokenizer.from_pretrained(dir)` reads (offline; no hub access).

    python -m train.tokenizer --vocab-size 16384 --max-records 20000 --out runs/tokenizer
"""

import argparse
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from train.chat import BOS, CHAT_TEMPLATE, EOS, PAD, ROLE_TOKENS, SPECIAL_TOKENS
from train.data import Source, read_conversations


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 16384  # including the 256 byte tokens and the special tokens
    max_records: int | None = 20_000  # train-split conversations to learn merges from; None: all
    max_chars: int | None = 50_000_000  # cap on the text fed to the trainer; None: no cap
    min_frequency: int = 2  # a pair must occur this often to be merged
    model_max_length: int = (
        4096  # written to tokenizer_config.json (the longest the models are used at)
    )

    def __post_init__(self):
        floor = 256 + len(SPECIAL_TOKENS)
        if self.vocab_size <= floor:
            raise ValueError(
                f"{self.vocab_size=} must exceed 256 bytes + {len(SPECIAL_TOKENS)} special tokens"
            )
        for name in ("max_records", "max_chars"):
            if (value := getattr(self, name)) is not None and value < 1:
                raise ValueError(f"{name}={value} must be positive or None")


def training_texts(config: TokenizerConfig, source: Source = None) -> Iterator[str]:
    """Turn texts of the first `max_records` train-split conversations, up to `max_chars` in all."""
    chars = 0
    for record_index, conversation in enumerate(read_conversations(source, split="train")):
        if config.max_records is not None and record_index >= config.max_records:
            return
        for _, text in conversation.turns:
            if config.max_chars is not None and chars + len(text) > config.max_chars:
                return
            chars += len(text)
            yield text


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE pipeline (no normalizer: text is kept byte-exact)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    # Adds no tokens (bos comes from the chat template); only maps offsets back to the input text.
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def train_tokenizer(
    config: TokenizerConfig, source: Source = None, *, progress: bool = False
) -> Tokenizer:
    """Learn BPE merges on the train split; the special tokens come first (ids 0..5)."""
    tokenizer = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    tokenizer.train_from_iterator(training_texts(config, source), trainer)
    ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(f"special tokens got ids {ids}, expected 0..{len(SPECIAL_TOKENS) - 1}")
    return tokenizer


def save_tokenizer(
    tokenizer: Tokenizer, out_dir: str | os.PathLike, *, model_max_length: int
) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    special = {
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "additional_special_tokens": list(ROLE_TOKENS.values()),
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": model_max_length,
        # transformers would otherwise "clean up" spaces before punctuation on decode and break the
        # exact round trip.
        "clean_up_tokenization_spaces": False,
    }
    for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        (out / name).write_text(
            json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return out


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The `tokenizers` pipeline from a saved directory (or a tokenizer.json file)."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    return Tokenizer.from_file(str(file))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = TokenizerConfig()
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size)
    parser.add_argument(
        "--max-records", type=int, default=defaults.max_records, help="0: all records"
    )
    parser.add_argument("--max-chars", type=int, default=defaults.max_chars, help="0: no cap")
    parser.add_argument("--min-frequency", type=int, default=defaults.min_frequency)
    parser.add_argument("--model-max-length", type=int, default=defaults.model_max_length)
    parser.add_argument(
        "--data", default=None, help="a ShareGPT-format JSON file (default: the packaged one)"
    )
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    config = TokenizerConfig(
        vocab_size=args.vocab_size,
        max_records=args.max_records or None,
        max_chars=args.max_chars or None,
        min_frequency=args.min_frequency,
        model_max_length=args.model_max_length,
    )
    tokenizer = train_tokenizer(config, args.data, progress=True)
    out = save_tokenizer(tokenizer, args.out, model_max_length=config.model_max_length)
    print(f"saved a {tokenizer.get_vocab_size()}-token tokenizer to {out}")


if __name__ == "__main__":
    main()
