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
import unicodedata
from collections.abc import Callable
from typing import Any

_INVISIBLE = frozenset({"Cc", "Cf"})


def fold_name(name: str) -> str:
    """The form under which two member names count as the same for a lenient parser."""
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
    return len(obj) > 1 and len({fold_name(k) for k in obj}) != len(obj)


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
    hook: Callable[[list[tuple[str, Any]]], dict[str, Any]] = (
        _unique_folded if fold_names else _unique
    )
    return json.loads(decode_utf8(raw), object_pairs_hook=hook)
