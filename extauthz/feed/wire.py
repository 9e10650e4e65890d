"""The streaming feed's messages (``extauthz.feed.v1``) to and from the feed's own types.

The only module that knows both: the stream source reads with it, the publisher writes
with it, and the feed's snapshot and delta logic never sees a protobuf. Reading validates
with the shared rules of ``extauthz.feed.snapshot``, so a streamed feed is held to exactly
what a JSON feed file is.
"""

from __future__ import annotations

from extauthz.errors import FeedError
from extauthz.feed.delta import (
    AgentDisabled,
    AgentEnabled,
    Change,
    FeedDelta,
    TokenRevoked,
    TokenUnrevoked,
    UserRemoved,
    UserUpserted,
)
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
from extauthz.feed.v1 import feed_pb2
from extauthz.permissions import GrantSet


def snapshot_from_message(message: feed_pb2.Snapshot, source: str) -> FeedSnapshot:
    """A validated snapshot. Raises FeedError saying where and what is wrong."""
    version = check_version(message.version, source)
    interned = Interned()
    users: dict[str, UserEntry] = {}
    for user in message.users:
        check_user_id(user.id, source)
        # The JSON feed refuses a repeated member for the same reason: a second entry
        # must not silently re-enable a user the first one disabled.
        if user.id in users:
            raise FeedError(f"{source}: users: {user.id!r}: listed twice")
        users[user.id] = user_entry(
            user.id, list(user.permissions), user.disabled, source, interned
        )
    agents: set[str] = set()
    for agent_id in message.disabled_agents:
        check_agent_id(agent_id, source)
        if agent_id in agents:
            raise FeedError(f"{source}: agents: {agent_id!r}: listed twice")
        agents.add(agent_id)
    revoked: dict[str, float] = {}
    for token in message.revoked_tokens:
        exp = revocation_exp(token.jti, token.exp, source)
        if token.jti in revoked:
            raise FeedError(f"{source}: revoked_tokens: {token.jti!r}: listed twice")
        revoked[token.jti] = exp
    return FeedSnapshot(version, users, frozenset(agents), revoked)


def delta_from_message(message: feed_pb2.Delta, source: str) -> FeedDelta:
    """The delta as sent; its values are validated when it is applied (``apply_delta``).
    Raises FeedError for a change with nothing set."""
    changes: list[Change] = []
    for i, change in enumerate(message.changes):
        kind = change.WhichOneof("change")
        if kind == "user_upserted":
            user = change.user_upserted
            changes.append(UserUpserted(user.id, tuple(user.permissions), user.disabled))
        elif kind == "user_removed":
            changes.append(UserRemoved(change.user_removed))
        elif kind == "agent_disabled":
            changes.append(AgentDisabled(change.agent_disabled))
        elif kind == "agent_enabled":
            changes.append(AgentEnabled(change.agent_enabled))
        elif kind == "token_revoked":
            changes.append(TokenRevoked(change.token_revoked.jti, change.token_revoked.exp))
        elif kind == "token_unrevoked":
            changes.append(TokenUnrevoked(change.token_unrevoked))
        else:
            # An empty change, or one of a kind added to the proto after this client was
            # built: applying the rest would leave the feed half-changed, so refuse it.
            raise FeedError(
                f"{source}: delta {message.from_version!r} -> {message.version!r}: "
                f"changes[{i}]: no known change set"
            )
    return FeedDelta(message.from_version, message.version, tuple(changes))


def snapshot_to_message(snapshot: FeedSnapshot) -> feed_pb2.Snapshot:
    message = feed_pb2.Snapshot(
        version=snapshot.version,
        disabled_agents=sorted(snapshot.disabled_agents),
        revoked_tokens=[
            feed_pb2.RevokedToken(jti=jti, exp=exp) for jti, exp in snapshot.revoked_tokens.items()
        ],
    )
    # Sorted once per distinct permission set (they are shared), and added in place: about
    # three times quicker than building a list of User messages for a million users.
    sorted_sets: dict[GrantSet, list[str]] = {}
    add_user = message.users.add
    for user_id, entry in snapshot.users.items():
        permissions = sorted_sets.get(entry.permissions)
        if permissions is None:
            permissions = sorted_sets[entry.permissions] = sorted(entry.permissions.grants)
        add_user(id=user_id, permissions=permissions, disabled=entry.disabled)
    return message


def delta_to_message(delta: FeedDelta) -> feed_pb2.Delta:
    return feed_pb2.Delta(
        from_version=delta.from_version,
        version=delta.version,
        changes=[_change_to_message(change) for change in delta.changes],
    )


def _change_to_message(change: Change) -> feed_pb2.Change:
    match change:
        case UserUpserted(user_id, permissions, disabled):
            user = feed_pb2.User(id=user_id, permissions=list(permissions), disabled=disabled)
            return feed_pb2.Change(user_upserted=user)
        case UserRemoved(user_id):
            return feed_pb2.Change(user_removed=user_id)
        case AgentDisabled(agent_id):
            return feed_pb2.Change(agent_disabled=agent_id)
        case AgentEnabled(agent_id):
            return feed_pb2.Change(agent_enabled=agent_id)
        case TokenRevoked(jti, exp):
            return feed_pb2.Change(token_revoked=feed_pb2.RevokedToken(jti=jti, exp=exp))
        case TokenUnrevoked(jti):
            return feed_pb2.Change(token_unrevoked=jti)
