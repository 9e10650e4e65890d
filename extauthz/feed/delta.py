"""Versioned changes to a feed: applying one to a snapshot, and computing one between two.

A delta turns the feed at ``from_version`` into the feed at ``version``. Applying it is
copy-on-write: the snapshot it applies to is never modified (requests in flight keep
reading it), and the result is a new ``FeedSnapshot`` swapped into the cache whole. Only
the changed entries are validated, with the same rules and words as ``parse_feed``, so a
one-user change to a feed of a million users costs a table copy, not a reload.

Each change sets a state (upsert, remove, disable, enable, revoke, unrevoke), so a change
already in effect is a no-op; what keeps a client and its server in step is the version
check, not the changes themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from extauthz.errors import FeedError
from extauthz.feed.snapshot import (
    FeedSnapshot,
    Interned,
    UserEntry,
    check_agent_id,
    check_user_id,
    check_version,
    revocation_exp,
    user_entry,
)


@dataclass(frozen=True, slots=True)
class UserUpserted:
    """Add the user, or replace their entry whole. Values as received; validated on apply."""

    user_id: str
    permissions: tuple[str, ...]
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class UserRemoved:
    user_id: str


@dataclass(frozen=True, slots=True)
class AgentDisabled:
    agent_id: str


@dataclass(frozen=True, slots=True)
class AgentEnabled:
    agent_id: str


@dataclass(frozen=True, slots=True)
class TokenRevoked:
    jti: str
    exp: float


@dataclass(frozen=True, slots=True)
class TokenUnrevoked:
    jti: str


Change = UserUpserted | UserRemoved | AgentDisabled | AgentEnabled | TokenRevoked | TokenUnrevoked


@dataclass(frozen=True, slots=True)
class FeedDelta:
    from_version: str
    version: str
    changes: tuple[Change, ...] = ()


def apply_delta(snapshot: FeedSnapshot, delta: FeedDelta, source: str) -> FeedSnapshot:
    """The feed ``delta`` turns ``snapshot`` into; ``snapshot`` itself is left as it is.

    Raises FeedError, naming the change and what is wrong with it, when the delta is for
    another version than ``snapshot``'s or any change is invalid: all or nothing.
    """
    where = f"{source}: delta {delta.from_version!r} -> {delta.version!r}"
    if delta.from_version != snapshot.version:
        raise FeedError(
            f"{where}: applies to version {delta.from_version!r}, "
            f"but the feed held is version {snapshot.version!r}"
        )
    check_version(delta.version, where)
    if delta.version == delta.from_version:
        raise FeedError(f"{where}: version: must differ from from_version")
    # Each table is copied only if a change touches it: copying a dict is one C-level
    # pass with no validation, which is what makes a small delta cheap on a large feed.
    users: dict[str, UserEntry] | None = None
    agents: set[str] | None = None
    revoked: dict[str, float] | None = None
    # Sets are shared within this delta only; seeding from the whole feed would cost a
    # pass over every user, and a few unshared sets are a negligible amount of memory.
    interned = Interned()
    for i, change in enumerate(delta.changes):
        at = f"{where}: changes[{i}]"
        match change:
            case UserUpserted(user_id, permissions, disabled):
                check_user_id(user_id, at)
                entry = user_entry(user_id, list(permissions), disabled, at, interned)
                if users is None:
                    users = dict(snapshot.users)
                users[user_id] = entry
            case UserRemoved(user_id):
                check_user_id(user_id, at)
                if user_id in (snapshot.users if users is None else users):
                    if users is None:
                        users = dict(snapshot.users)
                    del users[user_id]
            case AgentDisabled(agent_id) | AgentEnabled(agent_id):
                check_agent_id(agent_id, at)
                if agents is None:
                    agents = set(snapshot.disabled_agents)
                if isinstance(change, AgentDisabled):
                    agents.add(agent_id)
                else:
                    agents.discard(agent_id)
            case TokenRevoked(jti, exp):
                exp = revocation_exp(jti, exp, at)
                if revoked is None:
                    revoked = dict(snapshot.revoked_tokens)
                revoked[jti] = exp
            case TokenUnrevoked(jti):
                if not jti:
                    raise FeedError(f"{at}: revoked_tokens: token ids must be non-empty")
                if revoked is None:
                    revoked = dict(snapshot.revoked_tokens)
                revoked.pop(jti, None)
    return FeedSnapshot(
        delta.version,
        snapshot.users if users is None else users,
        disabled_agents=snapshot.disabled_agents if agents is None else frozenset(agents),
        revoked_tokens=snapshot.revoked_tokens if revoked is None else revoked,
    )


def diff_snapshots(old: FeedSnapshot, new: FeedSnapshot) -> FeedDelta:
    """The delta that turns ``old`` into ``new`` (for a publisher that reads whole feeds).

    One pass over both user tables; users whose entries are equal produce no change.
    Applying the result to ``old`` gives a snapshot equal to ``new``.
    """
    changes: list[Change] = []
    for user_id, entry in new.users.items():
        before = old.users.get(user_id)
        if before is None or before != entry:
            changes.append(
                UserUpserted(user_id, tuple(sorted(entry.permissions.grants)), entry.disabled)
            )
    changes.extend(UserRemoved(user_id) for user_id in old.users if user_id not in new.users)
    changes.extend(AgentDisabled(a) for a in sorted(new.disabled_agents - old.disabled_agents))
    changes.extend(AgentEnabled(a) for a in sorted(old.disabled_agents - new.disabled_agents))
    changes.extend(
        TokenRevoked(jti, exp)
        for jti, exp in new.revoked_tokens.items()
        if old.revoked_tokens.get(jti) != exp
    )
    changes.extend(
        TokenUnrevoked(jti) for jti in old.revoked_tokens if jti not in new.revoked_tokens
    )
    return FeedDelta(old.version, new.version, tuple(changes))
