"""JSON parsing for anything we authorize from: strict UTF-8, and no ambiguous member names.

Two parsers can read one document differently: ``{"name": "a", "name": "b"}`` is first-wins
in one and last-wins in another, and some (Go's encoding/json, for one) match member names
case-insensitively, so ``{"name": "a", "Name": "b"}`` reads as "b" there. When we authorize
what our parser read and an upstream acts on what its parser read, any such gap is an
authorization bypass (compare GHSA-wvj2-96wp-fq3f). So documents whose member names collide
exactly, or (with ``fold_names``) after case folding, NFKC and dropping control and format
characters, are refused. Encodings other than UTF-8, and a byte-order mark, are refused
too (RFC 8259 §8.1, RFC 8725 §3.7).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any

_INVISIBLE = frozenset({"Cc", "Cf"})


def fold_name(name: str) -> str:
    """The form under which two member names count as the same for a lenient parser."""
    if name.isascii():
        # NFKC leaves ASCII alone and casefold is lower there: the common case, cheaply.
        lowered = name.lower()
        if lowered.isprintable():
            return lowered
    folded = unicodedata.normalize("NFKC", name).casefold()
    if folded.isascii() and folded.isprintable():
        return folded
    return "".join(c for c in folded if unicodedata.category(c) not in _INVISIBLE)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def has_folded_collision(obj: dict[str, Any]) -> bool:
    """Whether two member names of ``obj`` are the same under ``fold_name``."""
    if len(obj) < 2:
        return False
    names = "".join(obj)
    if names.isascii() and names.isprintable() and names == names.lower():
        # Every name is its own folded form (fold_name's first case), and the names are
        # distinct already: no collision, found without folding name by name.
        return False
    return len({fold_name(k) for k in obj}) != len(obj)


def _unique_folded(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = _unique(pairs)
    if has_folded_collision(result):
        raise ValueError("member names that differ only in case or invisible characters")
    return result


def decode_utf8(raw: bytes) -> str:
    """Strict UTF-8 without a byte-order mark. Raises ValueError."""
    text = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if text.startswith("\ufeff"):
        raise ValueError("byte-order mark")
    return text


def loads_strict(raw: bytes, *, fold_names: bool = True) -> Any:
    """Parse a JSON document. Raises ValueError for bad encoding, invalid JSON or colliding
    member names, and RecursionError for absurd nesting."""
    text = decode_utf8(raw)
    scan = _FOLDED_SCAN if fold_names else _UNIQUE_SCAN
    # What JSONDecoder.decode does, without its two Python-level calls: whitespace, one
    # value, whitespace, and nothing after.
    try:
        value, end = scan(text, _after_whitespace(text, 0))
    except StopIteration as err:
        raise ValueError(f"expected a value at position {err.value}") from None
    if _after_whitespace(text, end) != len(text):
        raise ValueError(f"extra data at position {end}")
    return value


def _after_whitespace(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    return match.end() if match else pos


_WHITESPACE = re.compile(r"[ \t\n\r]*")
# Made once (json.loads with a hook builds a decoder per call); their C scanners are called
# directly.
_FOLDED_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder(
    object_pairs_hook=_unique_folded
).scan_once  # type: ignore[attr-defined]
_UNIQUE_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder(
    object_pairs_hook=_unique
).scan_once  # type: ignore[attr-defined]
_SEPARATOR = re.compile(r"[ \t\n\r]*([,}])[ \t\n\r]*")
# A member name without escapes or control characters, then the colon.
_SIMPLE_NAME = re.compile(r'"([^"\\\x00-\x1f]*)"[ \t\n\r]*:[ \t\n\r]*')


class _Cursor:
    __slots__ = ("pos", "text")

    def __init__(self, text: str, pos: int) -> None:
        self.text = text
        self.pos = pos

    def skip(self) -> int:
        self.pos = _after_whitespace(self.text, self.pos)
        return self.pos

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]


class ObjectReader:
    """Reads one JSON object member by member, never holding it whole: for documents too
    large to keep in memory twice (a feed of a million users). The same rules hold as for
    ``loads_strict``: member names unique at every level, strict strings.

    Iterate ``names()``; after each name, read its value with ``value()`` or, for a value
    that may be a large object, ``object()`` (and iterate that reader's ``names()``).
    ``finish()`` checks that nothing follows the top-level object.
    """

    def __init__(self, text: str, *, fold_names: bool = False, _cursor: _Cursor | None = None):
        self._cursor = _cursor or _Cursor(text, 0)
        self._fold = fold_names
        hook = _unique_folded if fold_names else _unique
        self._decoder = json.JSONDecoder(object_pairs_hook=hook)
        # The decoder's C scanner, called directly: a large feed calls it a million times.
        self._scan: Callable[[str, int], tuple[Any, int]] = self._decoder.scan_once  # type: ignore[attr-defined]
        self._cursor.skip()
        if self._cursor.peek() != "{":
            raise ValueError(f"expected an object at position {self._cursor.pos}")
        self._cursor.pos += 1
        self._value_pending = False

    def names(self) -> Iterator[str]:
        """Yield each member name. Raises ValueError for bad syntax or a repeated name."""
        cursor, seen = self._cursor, set()
        cursor.skip()
        if cursor.peek() == "}":
            cursor.pos += 1
            return
        while True:
            # Most names hold no escapes: one regex step reads the name and the colon.
            simple = _SIMPLE_NAME.match(cursor.text, cursor.pos)
            if simple is not None:
                name, cursor.pos = simple.group(1), simple.end()
            else:
                if cursor.peek() != '"':
                    raise ValueError(f"expected a member name at position {cursor.pos}")
                name, cursor.pos = self._decoder.raw_decode(cursor.text, cursor.pos)
                cursor.skip()
                if cursor.peek() != ":":
                    raise ValueError(f"expected ':' at position {cursor.pos}")
                cursor.pos += 1
                cursor.skip()
            key = fold_name(name) if self._fold else name
            if key in seen:
                raise ValueError("duplicate member name")
            seen.add(key)
            self._value_pending = True
            yield name
            if self._value_pending:
                raise RuntimeError("a member's value was not read")
            separator = _SEPARATOR.match(cursor.text, cursor.pos)
            if separator is None:
                raise ValueError(f"expected ',' or '}}' at position {cursor.skip()}")
            cursor.pos = separator.end()
            if separator.group(1) == "}":
                return

    def value(self) -> Any:
        """The current member's value, parsed whole."""
        self._value_pending = False
        try:
            value, self._cursor.pos = self._scan(self._cursor.text, self._cursor.pos)
        except StopIteration as err:
            raise ValueError(f"expected a value at position {err.value}") from None
        return value

    def object(self) -> ObjectReader | None:
        """A reader for the current member's value when it is an object, to be read
        through before the next member; None (read it with ``value()``) otherwise."""
        if self._cursor.peek() != "{":
            return None
        self._value_pending = False
        return ObjectReader(self._cursor.text, fold_names=self._fold, _cursor=self._cursor)

    def finish(self) -> None:
        """Only whitespace may follow the top-level object."""
        if self._cursor.skip() != len(self._cursor.text):
            raise ValueError(f"extra data at position {self._cursor.pos}")
