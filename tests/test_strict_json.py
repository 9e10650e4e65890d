"""Strict JSON (extauthz/strict_json.py): the member-by-member reader agrees with the
whole-document parser on every document, and refuses what it refuses."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.strict_json import (
    ObjectReader,
    _unique,
    _unique_folded,
    decode_utf8,
    loads_strict,
)


def read_all(text: str) -> dict[str, Any]:
    """A whole object through ObjectReader, nested objects through nested readers."""

    def read(reader: ObjectReader) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for name in reader.names():
            nested = reader.object()
            result[name] = read(nested) if nested is not None else reader.value()
        return result

    reader = ObjectReader(text)
    result = read(reader)
    reader.finish()
    return result


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6), st.booleans())
def test_reader_agrees_with_the_whole_document_parser(
    document: dict[str, Any], pretty: bool
) -> None:
    text = json.dumps(document, indent=2 if pretty else None, ensure_ascii=False)
    assert read_all(text) == loads_strict(text.encode(), fold_names=False)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 2}',
        '{"a": {"b": 1, "b": 2}}',
        '{"a": [{"b": 1, "b": 2}]}',
        '{"a\\u0062": 1, "ab": 2}',  # the same name, one spelt with an escape
        '{"a": 1',
        '{"a" 1}',
        '{"a": 1,}',
        '{"a": 1} x',
        '{"a": 1}{}',
        "{a: 1}",
        '{"a": tru}',
        '{"a\x01": 1}',
        '{"a": "\x01"}',
    ],
)
def test_reader_refuses_what_strict_parsing_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        loads_strict(text.encode(), fold_names=False)
    with pytest.raises(ValueError):
        read_all(text)


def test_reader_refuses_a_document_that_is_not_an_object() -> None:
    with pytest.raises(ValueError, match="expected an object"):
        read_all("[1, 2]")


def test_empty_object_and_surrounding_whitespace_are_fine() -> None:
    assert read_all(" \n{ }\n ") == {}
    assert read_all('\t{"a" :\n[1,2] , "b":{}}\r\n') == {"a": [1, 2], "b": {}}


_JSONISH = [
    "{", "}", "[", "]", '"a"', '"', ":", ",", "1", "0", "-", ".", "e", "+", " ", "\t", "\x00",
    "\x1f", "\x7f", "true", "null", "fals", "\\", "u", "\\u00", '"\\ud83d\\ude00"', "\\ud800",
    "é", "NaN", "Infinity", "01", "1e400", "9" * 25, "18446744073709551616", "-9223372036854775809",
]  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(
    st.lists(st.sampled_from(_JSONISH), max_size=10).map(lambda parts: "".join(parts).encode())
    | st.binary(max_size=12)
)
def test_the_unsigned_token_parse_accepts_only_what_the_strict_parser_reads_the_same(
    raw: bytes,
) -> None:
    # Token parts are first read with orjson (fast, before the signature is checked), and
    # only after it with the strict parser: orjson must not take a document the standard
    # parser refuses, nor read one differently.
    try:
        fast = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    standard = json.loads(decode_utf8(raw))
    assert repr(fast) == repr(_big_integers_as_floats(standard))


def _big_integers_as_floats(value: Any) -> Any:
    # Outside 64 bits (signed below, unsigned above) orjson reads an integer as a float;
    # a time claim is a float to us either way.
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return float(value)
    if isinstance(value, list):
        return [_big_integers_as_floats(item) for item in value]
    if isinstance(value, dict):
        return {name: _big_integers_as_floats(item) for name, item in value.items()}
    return value


def _reference_strict(raw: bytes, fold_names: bool) -> Any:
    # The plain way: json.loads with the hook, which builds a decoder per call.
    hook = _unique_folded if fold_names else _unique
    return json.loads(decode_utf8(raw), object_pairs_hook=hook)


@settings(max_examples=3000, deadline=None)
@given(
    st.lists(st.sampled_from([*_JSONISH, '"A"', "\u200b", '"a"']), max_size=10).map(
        lambda parts: "".join(parts).encode()
    )
    | st.binary(max_size=12),
    st.booleans(),
)
def test_the_strict_parser_reads_and_refuses_as_json_loads_with_its_hook(
    raw: bytes, fold_names: bool
) -> None:
    try:
        expected: Any = ("value", _reference_strict(raw, fold_names))
    except (ValueError, RecursionError) as err:
        expected = ("refused", type(err) is RecursionError)
    try:
        got: Any = ("value", loads_strict(raw, fold_names=fold_names))
    except (ValueError, RecursionError) as err:
        got = ("refused", type(err) is RecursionError)
    assert repr(got) == repr(expected)
