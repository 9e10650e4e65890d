"""Strict JSON (extauthz/strict_json.py): the member-by-member reader agrees with the
whole-document parser on every document, and refuses what it refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.strict_json import ObjectReader, loads_strict


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
