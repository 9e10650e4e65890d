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

import contextlib
import gc
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from extauthz.errors import FeedError
from extauthz.permissions import GrantSet, permission_problem
from extauthz.strict_json import ObjectReader, decode_utf8, loads_strict

_USER_KEYS = frozenset({"permissions", "disabled"})
_AGENT_KEYS = frozenset({"disabled"})
_FIRST_TOKEN = re.compile(r"[ \t\n\r]*\{")
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


def feed_document(snapshot: FeedSnapshot) -> dict[str, object]:
    """The JSON document ``parse_feed`` reads, for this snapshot."""
    return {
        "version": snapshot.version,
        "users": {
            user_id: (
                {"permissions": sorted(entry.permissions.grants), "disabled": True}
                if entry.disabled
                else {"permissions": sorted(entry.permissions.grants)}
            )
            for user_id, entry in snapshot.users.items()
        },
        "agents": {agent_id: {"disabled": True} for agent_id in sorted(snapshot.disabled_agents)},
        "revoked_tokens": dict(snapshot.revoked_tokens),
    }


def parse_feed(raw: bytes, source: str) -> FeedSnapshot:
    """Parse and validate a feed document. Raises FeedError saying where and what is wrong.

    The users are read one at a time, so a feed of a million users is never held twice
    (as a parsed document and as the snapshot). Exact duplicates are refused (a second
    "bob" entry must not re-enable a disabled bob); case is not folded, because "Alice"
    and "alice" may be different users.
    """
    try:
        text = decode_utf8(raw)
        # Millions of objects and no reference cycles: without pausing the cycle
        # collector it would rescan them over and over.
        if _FIRST_TOKEN.match(text) is None:
            loads_strict(raw, fold_names=False)  # valid JSON, then, but not an object?
            raise FeedError(f"{source}: must be a JSON object")
        with _collector_paused():
            document: dict[str, object] = {}
            entries: dict[str, UserEntry] | None = None
            reader = ObjectReader(text)
            for name in reader.names():
                users = reader.object() if name == "users" else None
                if users is None:
                    document[name] = reader.value()
                    continue
                shared, entries = Interned(), {}
                for user_id in users.names():
                    entries[user_id] = _user_entry(user_id, users.value(), source, shared)
            reader.finish()
    except (ValueError, RecursionError) as err:
        raise FeedError(f"{source}: not valid JSON: {err}") from err
    return _snapshot(document, entries, source)


def snapshot_from_document(document: object, source: str) -> FeedSnapshot:
    """Validate an already-parsed feed document. Raises FeedError."""
    if not isinstance(document, dict):
        raise FeedError(f"{source}: must be a JSON object")
    users = document.get("users")
    entries: dict[str, UserEntry] | None = None
    if isinstance(users, dict):
        shared, entries = Interned(), {}
        with _collector_paused():
            for user_id, entry in users.items():
                entries[user_id] = _user_entry(user_id, entry, source, shared)
    return _snapshot(document, entries, source)


def _snapshot(
    document: Mapping[str, object], entries: dict[str, UserEntry] | None, source: str
) -> FeedSnapshot:
    """The snapshot from a document whose users (``entries``, None when ``users`` is not
    an object) are validated already."""
    unknown = sorted(set(document) - _TOP_KEYS - {"users"})
    if unknown:
        raise FeedError(f"{source}: {unknown[0]}: unknown key")
    version = document.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    checked_version = check_version(version, source)
    if entries is None:
        raise FeedError(f"{source}: users: must be an object of user id to entry")
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
    if not isinstance(permissions, list):
        raise FeedError(f"{source}: users.{user_id}.permissions: must be a list")
    grants = interned.grant_set(permissions, f"{source}: users.{user_id}")
    if not isinstance(disabled, bool):
        raise FeedError(f"{source}: users.{user_id}.disabled: must be true or false")
    return interned.entry(grants, disabled)


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


class Interned:
    """What many users have in common, built once per load: permission sets (from a
    role, usually) and whole entries. Keeps a large feed small in memory and quick to
    load, whichever way it arrives (JSON document, streamed snapshot, delta)."""

    def __init__(self) -> None:
        self.grants: dict[tuple[str, ...], GrantSet] = {}
        self.unordered: dict[frozenset[str], GrantSet] = {}
        # By the grant set's identity: sets are shared, and identity hashes in C.
        self.entries: dict[tuple[int, bool], UserEntry] = {}

    def grant_set(self, permissions: list[Any], where: str) -> GrantSet:
        key = tuple(permissions)
        try:
            found = self.grants.get(key)
        except TypeError:  # an unhashable item, e.g. a list: invalid, reported below
            found = None
        if found is not None:
            return found
        for i, permission in enumerate(permissions):
            problem = permission_problem(permission, allow_wildcard=True)
            if problem:
                raise FeedError(f"{where}.permissions[{i}]: {problem}")
        # The same set in another order is the same set.
        unordered = frozenset(permissions)
        grants = self.unordered.get(unordered)
        if grants is None:
            grants = self.unordered[unordered] = GrantSet(unordered)
        self.grants[key] = grants
        return grants

    def entry(self, grants: GrantSet, disabled: bool) -> UserEntry:
        key = (id(grants), disabled)
        found = self.entries.get(key)
        if found is None:
            found = self.entries[key] = UserEntry(grants, disabled)
        return found


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _user_entry(user_id: str, entry: object, source: str, interned: Interned) -> UserEntry:
    check_user_id(user_id, source)
    if not isinstance(entry, dict):
        raise FeedError(f"{source}: users.{user_id}: must be an object")
    if not _USER_KEYS.issuperset(entry):
        unknown = sorted(set(entry) - _USER_KEYS)[0]
        raise FeedError(f"{source}: users.{user_id}: {unknown}: unknown key")
    return user_entry(
        user_id, entry.get("permissions", []), entry.get("disabled", False), source, interned
    )
