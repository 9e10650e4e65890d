"""Permission strings and grant sets.

A permission is ``:``-separated segments, e.g. ``tickets:read``. A grant may use ``*`` as a
whole segment: inside a grant it matches exactly one segment (``tickets:*:read``), and as the
last segment it matches one or more remaining segments (``tickets:*`` grants ``tickets:read``
and ``tickets:comments:write``; ``*`` grants everything). A ``*`` inside a segment
(``tick*``) is not a wildcard: config and feed loading reject it, and in a token scope it can
only match a permission spelt exactly that way, which required permissions never are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SEGMENT = re.compile(r"[A-Za-z0-9_.\-/]+")


def permission_problem(text: object, *, allow_wildcard: bool) -> str | None:
    """Why ``text`` is not a valid permission (or grant), or None when it is."""
    if not isinstance(text, str):
        return f"must be a string, got {type(text).__name__}"
    if not text:
        return "must not be empty"
    for segment in text.split(":"):
        if segment == "*":
            if not allow_wildcard:
                return f"{text!r}: required permissions are concrete, '*' is only for grants"
            continue
        if not _SEGMENT.fullmatch(segment):
            return f"{text!r}: segment {segment!r} must be letters, digits, '_', '-', '.', '/'" + (
                " or a whole '*'" if allow_wildcard else ""
            )
    return None


class GrantSet:
    """An immutable set of grants, prepared once so that a check is a set lookup or two."""

    __slots__ = ("_exact", "_patterns", "grants")

    def __init__(self, grants: Iterable[str]) -> None:
        self.grants: frozenset[str] = frozenset(grants)
        exact: set[str] = set()
        patterns: list[tuple[str, ...]] = []
        for grant in self.grants:
            if "*" in grant.split(":"):
                patterns.append(tuple(grant.split(":")))
            else:
                exact.add(grant)
        # Without wildcards (the usual case) the exact set is the grants: share it.
        self._exact = self.grants if not patterns else frozenset(exact)
        self._patterns = tuple(patterns)

    def grants_permission(self, permission: str) -> bool:
        if permission in self._exact:
            return True
        if not self._patterns:
            return False
        segments = permission.split(":")
        return any(_pattern_matches(p, segments) for p in self._patterns)

    def __len__(self) -> int:
        return len(self.grants)

    def __repr__(self) -> str:
        return f"GrantSet({sorted(self.grants)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GrantSet) and other.grants == self.grants

    def __hash__(self) -> int:
        return hash(self.grants)


def _pattern_matches(pattern: tuple[str, ...], segments: list[str]) -> bool:
    last = len(pattern) - 1
    for i, want in enumerate(pattern):
        if i >= len(segments):
            return False
        if want == "*":
            if i == last:
                return True  # a trailing '*' takes the rest, one segment or more
            continue
        if want != segments[i]:
            return False
    return len(segments) == len(pattern)
