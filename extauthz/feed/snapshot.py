"""The user-permission feed: an immutable, versioned snapshot, validated whole before use.

Format (JSON)::

    {"version": "42",
     "users": {"alice": {"permissions": ["tickets:read"]},
               "bob":   {"permissions": [], "disabled": true}}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from extauthz.errors import FeedError
from extauthz.permissions import GrantSet, permission_problem
from extauthz.strict_json import loads_strict

_USER_KEYS = frozenset({"permissions", "disabled"})


@dataclass(frozen=True, slots=True)
class UserEntry:
    permissions: GrantSet
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class FeedSnapshot:
    version: str
    users: Mapping[str, UserEntry]


def parse_feed(raw: bytes, source: str) -> FeedSnapshot:
    """Parse and validate a feed document. Raises FeedError saying where and what is wrong."""
    try:
        # Exact duplicates are refused (a second "bob" entry must not re-enable a disabled
        # bob); case is not folded, because "Alice" and "alice" may be different users.
        document = loads_strict(raw, fold_names=False)
    except (ValueError, RecursionError) as err:
        raise FeedError(f"{source}: not valid JSON: {err}") from err
    if not isinstance(document, dict):
        raise FeedError(f"{source}: must be a JSON object")
    unknown = sorted(set(document) - {"version", "users"})
    if unknown:
        raise FeedError(f"{source}: {unknown[0]}: unknown key")
    version = document.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not version:
        raise FeedError(f"{source}: version: must be a non-empty string")
    users = document.get("users")
    if not isinstance(users, dict):
        raise FeedError(f"{source}: users: must be an object of user id to entry")
    # Many users share one permission set; building each distinct set once keeps a large
    # feed small in memory and quick to load.
    interned: dict[frozenset[str], GrantSet] = {}
    entries: dict[str, UserEntry] = {}
    for user_id, entry in users.items():
        entries[user_id] = _user_entry(user_id, entry, source, interned)
    return FeedSnapshot(version, entries)


def _user_entry(
    user_id: str, entry: object, source: str, interned: dict[frozenset[str], GrantSet]
) -> UserEntry:
    where = f"{source}: users.{user_id}"
    if not user_id or not user_id.isprintable() or user_id != user_id.strip():
        # User ids end up in headers and logs: no control characters, no edge spaces
        # (an upstream would read " alice" as "alice").
        raise FeedError(f"{source}: users: {user_id!r}: ids must be non-empty and printable")
    if not isinstance(entry, dict):
        raise FeedError(f"{where}: must be an object")
    if not _USER_KEYS.issuperset(entry):
        raise FeedError(f"{where}: {sorted(set(entry) - _USER_KEYS)[0]}: unknown key")
    permissions = entry.get("permissions", [])
    if not isinstance(permissions, list):
        raise FeedError(f"{where}.permissions: must be a list")
    key = frozenset(permissions) if all(isinstance(p, str) for p in permissions) else None
    grants = interned.get(key) if key is not None else None
    if grants is None:
        for i, permission in enumerate(permissions):
            problem = permission_problem(permission, allow_wildcard=True)
            if problem:
                raise FeedError(f"{where}.permissions[{i}]: {problem}")
        assert key is not None  # every item is a valid string by now
        grants = interned[key] = GrantSet(key)
    disabled = entry.get("disabled", False)
    if not isinstance(disabled, bool):
        raise FeedError(f"{where}.disabled: must be true or false")
    return UserEntry(grants, disabled)
