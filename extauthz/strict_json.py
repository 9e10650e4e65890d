"""JSON parsing that refuses duplicate member names.

Two parsers can resolve ``{"a": 1, "a": 2}`` differently (first wins, last wins). When we
authorize what one parser read and another acts on what it read, that gap is an attack, so
anything we authorize from (token headers and claims, MCP bodies) must have no duplicates.
"""

from __future__ import annotations

import json
from typing import Any


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def loads_strict(raw: bytes | str) -> Any:
    """Parse JSON. Raises ValueError for invalid JSON or duplicate member names, and
    RecursionError for absurd nesting."""
    return json.loads(raw, object_pairs_hook=_unique_members)
