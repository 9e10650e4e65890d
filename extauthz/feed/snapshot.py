"""The user-permission feed: an immutable, versioned snapshot, validated whole before use.

Format (JSON)::

    {"version": "42",
     "users": {"alice": {"permissions": ["tickets:read"]},
               "bob":   {"permissions": [], "disabled": true}},
     "agents": {"helpdesk-bot": {"disabled": true}},
     "revoked_tokens": {"3f9c0a": 1800000600}}

``agents`` and ``revoked_tokens`` are optional. ``revoked_tokens`` maps a token id (``jti``)
to that token's ``exp``: an entry is needed only until the token expires by itself, and
sources drop entries past that (``prune_expired``) so the list cannot grow without bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from extauthz.errors import FeedError
from extauthz.permissions import GrantSet, permission_problem
from extauthz.strict_json import loads_strict

_USER_KEYS = frozenset({"permissions", "disabled"})
_AGENT_KEYS = frozenset({"disabled"})
_TOP_KEYS = frozenset({"version", "users", "agents", "revoked_tokens"})


@dataclass(frozen=True, slots=True)
class UserEntry:
    permissions: GrantSet
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class FeedSnapshot:
    version: str
    users: Mapping[str, UserEntry]
    # Agents switched off at the source, on top of the config's own ``disabled`` flags.
    disabled_agents: frozenset[str] = frozenset()
    # jti -> exp of revoked tokens.
    revoked_tokens: Mapping[str, float] = field(default_factory=dict)

    def prune_expired(self, now: float, leeway: float) -> FeedSnapshot:
        """This snapshot without revocations of tokens that are expired anyway."""
        keep = {jti: exp for jti, exp in self.revoked_tokens.items() if exp + leeway >= now}
        if len(keep) == len(self.revoked_tokens):
            return self
        return replace(self, revoked_tokens=keep)


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
    unknown = sorted(set(document) - _TOP_KEYS)
    if unknown:
        raise FeedError(f"{source}: {unknown[0]}: unknown key")
    version = document.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    checked_version = check_version(version, source)
    users = document.get("users")
    if not isinstance(users, dict):
        raise FeedError(f"{source}: users: must be an object of user id to entry")
    # Many users share one permission set; building each distinct set once keeps a large
    # feed small in memory and quick to load.
    interned: Interned = {}
    entries: dict[str, UserEntry] = {}
    for user_id, entry in users.items():
        entries[user_id] = _json_user_entry(user_id, entry, source, interned)
    return FeedSnapshot(
        checked_version,
        entries,
        disabled_agents=_disabled_agents(document.get("agents", {}), source),
        revoked_tokens=_revoked_tokens(document.get("revoked_tokens", {}), source),
    )


# --- validation shared by every way a feed arrives (JSON document, streamed snapshot, delta)
#
# ``source`` in the messages says where the value came from: a file name, or a stream
# address with the message and change it was in. The messages are the JSON feed's own, so
# an operator reads the same words whichever way the feed is delivered.

# Distinct permission sets seen so far in one load, so identical sets are one object.
Interned = dict[frozenset[str], GrantSet]


def check_version(version: object, source: str) -> str:
    """A feed version: a non-empty string. Raises FeedError."""
    if not isinstance(version, str) or not version:
        raise FeedError(f"{source}: version: must be a non-empty string")
    return version


def check_user_id(user_id: str, source: str) -> None:
    """Raises FeedError unless ``user_id`` is usable as a user id."""
    if not _printable_id(user_id):
        raise FeedError(f"{source}: users: {user_id!r}: ids must be non-empty and printable")


def check_agent_id(agent_id: str, source: str) -> None:
    """Raises FeedError unless ``agent_id`` is usable as an agent id."""
    if not _printable_id(agent_id):
        raise FeedError(f"{source}: agents: {agent_id!r}: ids must be non-empty and printable")


def user_entry(
    user_id: str, permissions: object, disabled: object, source: str, interned: Interned
) -> UserEntry:
    """A validated ``UserEntry`` for an already checked ``user_id``. Raises FeedError."""
    where = f"{source}: users.{user_id}"
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
    if not isinstance(disabled, bool):
        raise FeedError(f"{where}.disabled: must be true or false")
    return UserEntry(grants, disabled)


def revocation_exp(jti: str, exp: object, source: str) -> float:
    """The ``exp`` of a revoked token, validated. Raises FeedError."""
    if not jti:
        raise FeedError(f"{source}: revoked_tokens: token ids must be non-empty")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or not math.isfinite(exp):
        raise FeedError(
            f"{source}: revoked_tokens.{jti}: must be the token's exp (seconds since epoch)"
        )
    return float(exp)


def _printable_id(value: str) -> bool:
    # Ids end up in headers and logs: no control characters, no edge spaces (an upstream
    # would read " alice" as "alice").
    return bool(value) and value.isprintable() and value == value.strip()


def _disabled_agents(agents: object, source: str) -> frozenset[str]:
    if not isinstance(agents, dict):
        raise FeedError(f"{source}: agents: must be an object of agent id to entry")
    disabled: set[str] = set()
    for agent_id, entry in agents.items():
        where = f"{source}: agents.{agent_id}"
        check_agent_id(agent_id, source)
        if not isinstance(entry, dict):
            raise FeedError(f"{where}: must be an object")
        if not _AGENT_KEYS.issuperset(entry):
            raise FeedError(f"{where}: {sorted(set(entry) - _AGENT_KEYS)[0]}: unknown key")
        flag = entry.get("disabled", False)
        if not isinstance(flag, bool):
            raise FeedError(f"{where}.disabled: must be true or false")
        if flag:
            disabled.add(agent_id)
    return frozenset(disabled)


def _revoked_tokens(revoked: object, source: str) -> dict[str, float]:
    if not isinstance(revoked, dict):
        raise FeedError(f"{source}: revoked_tokens: must be an object of jti to exp")
    return {jti: revocation_exp(jti, exp, source) for jti, exp in revoked.items()}


def _json_user_entry(user_id: str, entry: object, source: str, interned: Interned) -> UserEntry:
    where = f"{source}: users.{user_id}"
    check_user_id(user_id, source)
    if not isinstance(entry, dict):
        raise FeedError(f"{where}: must be an object")
    if not _USER_KEYS.issuperset(entry):
        raise FeedError(f"{where}: {sorted(set(entry) - _USER_KEYS)[0]}: unknown key")
    return user_entry(
        user_id, entry.get("permissions", []), entry.get("disabled", False), source, interned
    )
