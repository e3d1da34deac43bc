"""The streaming JSON-array reader: same elements as json.load, and corrupt elements skipped."""

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from train.jsonstream import BadElement, iter_json_array

# Strings full of what trips a hand-written scanner: quotes, backslashes, brackets, commas, unicode.
_nasty_text = st.text(
    alphabet=st.sampled_from(list('ab"\\[]{},: \n\té世🎉\x00')) | st.characters(codec="utf-8"),
    max_size=40,
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _nasty_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_nasty_text, children, max_size=4)
    ),
    max_leaves=20,
)


def _elements(data, **kwargs):
    if isinstance(data, str):
        return list(iter_json_array(io.StringIO(data), **kwargs))
    return list(iter_json_array(io.BytesIO(data), **kwargs))


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(_json_values, max_size=8),
    chunk_chars=st.sampled_from([1, 2, 7, 64, 1 << 20]),
    ensure_ascii=st.booleans(),
    indent=st.sampled_from([None, 2]),
    binary=st.booleans(),
)
def test_stream_matches_json_load(values, chunk_chars, ensure_ascii, indent, binary):
    text = json.dumps(values, ensure_ascii=ensure_ascii, indent=indent)
    data = (
        text.encode("utf-8") if binary else text
    )  # binary with tiny chunks splits UTF-8 characters
    assert _elements(data, chunk_chars=chunk_chars) == json.loads(text)


def test_corrupt_elements_are_skipped_and_reading_resumes():
    text = '[{"a": 1}, {"b": tru}, [1, 2]] , {"c": "x"}, 12, nope, "s", {"d": [}]'
    # `{"b": tru}` is balanced but invalid; `[1, 2]]` closes the array early: everything after the
    # first `]` at depth 0 ends the stream.
    got = _elements(text, chunk_chars=3)
    assert got[0] == {"a": 1}
    assert isinstance(got[1], BadElement) and got[1].reason == "decode_error"
    assert got[2] == [1, 2]
    assert len(got) == 3

    got = _elements('[{"a": 1}, {"b": tru}, nope, "s", 12, {"c": []}]', chunk_chars=4)
    reasons = [g.reason if isinstance(g, BadElement) else g for g in got]
    assert reasons == [{"a": 1}, "decode_error", "decode_error", "s", 12, {"c": []}]


@pytest.mark.parametrize(
    "text",
    [
        '[{"a": 1}, {"b": [1, 2',
        '[{"a": 1}, {"b": "unterminated',
        '[{"a": 1}, {"b": "x\\',
        '[{"a": 1}',
        '[{"a": 1},',
    ],
)
def test_truncated_file_ends_with_one_truncated_element(text):
    got = _elements(text, chunk_chars=5)
    assert got[0] == {"a": 1}
    assert len(got) == 2 and isinstance(got[1], BadElement) and got[1].reason == "truncated"


def test_too_large_element_is_skipped_without_stopping():
    big = {"big": ["x" * 50] * 100}
    text = json.dumps([{"a": 1}, big, {"b": 2}])
    got = _elements(text, chunk_chars=16, max_element_chars=1000)
    assert got[0] == {"a": 1} and got[2] == {"b": 2}
    assert isinstance(got[1], BadElement) and got[1].reason == "too_large"
    assert _elements(text, chunk_chars=16, max_element_chars=10_000) == [{"a": 1}, big, {"b": 2}]


def test_not_an_array_is_an_error():
    with pytest.raises(ValueError, match="expected a JSON array"):
        _elements('{"a": 1}')
    assert _elements("  \n[ ]  ") == []
    assert _elements(b"\xef\xbb\xbf[1]") == [1]  # a UTF-8 byte-order mark is dropped
