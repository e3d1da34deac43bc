"""Stream the elements of one big top-level JSON array with flat memory, surviving corrupt elements.

`json.load` on a 100+ MB array holds the text and every parsed object at once. Here the text is
read in chunks into a buffer that only ever holds the element being parsed (plus one chunk): a
small scanner finds where each element ends (strings are skipped whole by a regex, so only brackets
are counted in Python), then `json.JSONDecoder.raw_decode` parses exactly that slice at C speed.

An element that cannot be parsed does not stop the stream: it comes out as a `BadElement` with a
reason, and reading resumes after it:
    "decode_error"  the element's brackets balance but its text is not valid JSON
    "too_large"     the element is longer than `max_element_chars` (skipped without buffering it)
    "truncated"     the file ends inside an element or before the array's closing `]`
Limitation: corruption that unbalances brackets inside one element makes the scanner take that
element to run on into the following ones; they are then lost together ("too_large" or "truncated").
"""

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

DEFAULT_CHUNK_CHARS = 1 << 20  # 1 Mi characters per read
DEFAULT_MAX_ELEMENT_CHARS = 64 << 20  # larger elements are skipped (ShareGPT's largest is ~0.5 M)

# A complete JSON string (the unrolled form of "(?:[^"\\]|\\.)*", which Python's regex engine runs
# without recursion), else a bracket, else a lone quote: a string still open at the buffer's end.
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_TOKEN = re.compile(_STRING + r'|[\[\]{}]|"', re.DOTALL)
_STRING_RE = re.compile(_STRING, re.DOTALL)
_SCALAR_END = re.compile(r"[,\]\s]")
_NON_SPACE = re.compile(r"\S")


@dataclass(frozen=True)
class BadElement:
    """An array element that was skipped; `reason` is one of the reasons in the module docstring."""

    reason: str
    detail: str  # a short human-readable description (error message, first characters)


class _TextChunks:
    """Reads `chunk_chars` at a time from a text or binary file, decoding UTF-8 incrementally."""

    def __init__(self, file: IO, chunk_chars: int):
        self._file = file
        self._chunk = chunk_chars
        # utf-8-sig drops a leading byte-order mark; invalid bytes become U+FFFD rather than raising
        # mid-stream, where the error could not be pinned on one element.
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")

    def read(self) -> str:
        """The next chunk of text; "" only at the end of the file."""
        while True:
            data = self._file.read(self._chunk)
            if isinstance(data, str):
                return data
            text = self._decoder.decode(data, final=not data)
            if text or not data:  # a chunk may end inside a multi-byte character: read on
                return text


class _Scan:
    """Where the scan of the current element stands, so it resumes after the buffer grows."""

    def __init__(self, buf: str, start: int):
        self.first = buf[start]  # the element's first character: which kind of value it is
        self.pos = start  # next buffer index to look at (always at a token boundary)
        self.depth = 0  # open brackets

    def shift(self, offset: int) -> None:
        self.pos -= offset


def _element_end(buf: str, start: int, scan: _Scan) -> int | None:
    """Index just past the element that starts at `buf[start]`, or None if the buffer ends first."""
    if scan.first == '"':
        m = _STRING_RE.match(buf, start)
        return m.end() if m else None
    if scan.first not in "[{":  # a number, true/false/null or garbage: up to the next , ] or space
        m = _SCALAR_END.search(buf, start)
        return m.start() if m else None
    while m := _TOKEN.search(buf, scan.pos):
        token = m.group()
        if token == '"':  # a string still open at the buffer's end: rescan it from its quote
            scan.pos = m.start()
            return None
        scan.pos = m.end()
        if token in "[{":
            scan.depth += 1
        elif token in "]}":
            scan.depth -= 1
            if scan.depth == 0:
                return m.end()
    scan.pos = len(buf)
    return None


def iter_json_array(
    file: IO,
    *,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    max_element_chars: int = DEFAULT_MAX_ELEMENT_CHARS,
) -> Iterator[Any]:
    """Yield each element of the JSON array in `file` (text or binary), or a `BadElement` for one
    that cannot be parsed. Raises ValueError only if the file does not start with `[`."""
    if chunk_chars < 1 or max_element_chars < 1:
        raise ValueError(f"{chunk_chars=} and {max_element_chars=} must be positive")
    chunks = _TextChunks(file, chunk_chars)
    decoder = json.JSONDecoder()
    buf, pos, eof = "", 0, False

    def fill(keep_from: int) -> int:
        """Drop the buffer before `keep_from`, append a chunk; returns how far indices shifted."""
        nonlocal buf, eof
        text = chunks.read()
        eof = not text
        buf = buf[keep_from:] + text
        return keep_from

    def next_non_space() -> str:
        """Advance `pos` to the next non-whitespace character (reading as needed); "" at EOF."""
        nonlocal pos
        while not (m := _NON_SPACE.search(buf, pos)):
            if eof:
                pos = len(buf)
                return ""
            pos -= fill(pos)
        pos = m.start()
        return buf[pos]

    if next_non_space() != "[":
        raise ValueError(f"expected a JSON array, the file starts with {buf[pos : pos + 40]!r}")
    pos += 1
    while True:
        char = next_non_space()
        if char == "]":
            return
        if char == "":
            yield BadElement("truncated", "the file ends before the array's closing ']'")
            return
        if char == ",":
            # Separators are not checked strictly: a missing or doubled comma is harmless.
            pos += 1
            continue
        start, scan, too_large = pos, _Scan(buf, pos), False
        while (end := _element_end(buf, start, scan)) is None:
            if eof:
                yield BadElement(
                    "truncated", f"the file ends inside an element: {buf[max(start, 0) :][:80]!r}"
                )
                return
            if len(buf) - start > max_element_chars and scan.first in "[{":
                # Keep counting brackets but stop holding the element: keep only from the scan point
                # (a container's scan resumes there; a string or scalar must be held whole).
                too_large = True
            shift = fill(scan.pos if too_large else start)
            start -= shift
            scan.shift(shift)
        if too_large:
            yield BadElement("too_large", f"an element longer than {max_element_chars=} characters")
            pos = end
            continue
        try:
            value, parsed_end = decoder.raw_decode(buf, start)
        except json.JSONDecodeError as err:
            yield BadElement("decode_error", f"{err}: {buf[start : start + 80]!r}")
        else:
            if parsed_end == end:
                yield value
            else:  # valid JSON followed by junk inside the same bracketed span
                yield BadElement(
                    "decode_error", f"trailing data in element: {buf[start:end][:80]!r}"
                )
        pos = end
