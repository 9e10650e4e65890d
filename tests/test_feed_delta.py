"""Feed deltas: applying one (copy-on-write, validated like the JSON feed), computing one,
and the streaming messages they travel in."""

from __future__ import annotations

import json

import pytest

from extauthz.errors import FeedError
from extauthz.feed import snapshot as snapshot_module
from extauthz.feed.delta import (
    AgentDisabled,
    AgentEnabled,
    FeedDelta,
    TokenRevoked,
    TokenUnrevoked,
    UserRemoved,
    UserUpserted,
    apply_delta,
    diff_snapshots,
)
from extauthz.feed.snapshot import FeedSnapshot, UserEntry, parse_feed
from extauthz.feed.v1 import feed_pb2
from extauthz.feed.wire import (
    delta_from_message,
    delta_to_message,
    snapshot_from_message,
    snapshot_to_message,
)
from extauthz.permissions import GrantSet


def feed(document: dict[str, object]) -> FeedSnapshot:
    return parse_feed(json.dumps(document).encode(), "feed.json")


BASE = feed(
    {
        "version": "1",
        "users": {
            "alice": {"permissions": ["tickets:read"]},
            "bob": {"permissions": ["tickets:*"], "disabled": True},
        },
        "agents": {"helpdesk-bot": {"disabled": True}},
        "revoked_tokens": {"jti-old": 1800000000},
    }
)


def apply_error(*changes: object, from_version: str = "1", version: str = "2") -> str:
    delta = FeedDelta(from_version, version, tuple(changes))  # type: ignore[arg-type]
    with pytest.raises(FeedError) as info:
        apply_delta(BASE, delta, "grpc://feed:50051")
    return str(info.value)


# --- applying ------------------------------------------------------------------------


def test_delta_upserts_and_removes_users() -> None:
    delta = FeedDelta(
        "1",
        "2",
        (
            UserUpserted("carol", ("tickets:write",)),
            UserUpserted("alice", ("tickets:read", "tickets:write"), disabled=True),
            UserRemoved("bob"),
        ),
    )
    after = apply_delta(BASE, delta, "s")
    assert after.version == "2"
    assert sorted(after.users) == ["alice", "carol"]
    assert after.users["alice"] == UserEntry(GrantSet(["tickets:read", "tickets:write"]), True)
    assert after.users["carol"].permissions.grants_permission("tickets:write")


def test_delta_disables_and_enables_agents_and_revokes_and_unrevokes_tokens() -> None:
    delta = FeedDelta(
        "1",
        "2",
        (
            AgentDisabled("report-bot"),
            AgentEnabled("helpdesk-bot"),
            TokenRevoked("jti-new", 1800000600),
            TokenUnrevoked("jti-old"),
        ),
    )
    after = apply_delta(BASE, delta, "s")
    assert after.disabled_agents == frozenset({"report-bot"})
    assert after.revoked_tokens == {"jti-new": 1800000600.0}


def test_applying_a_delta_leaves_the_original_snapshot_untouched() -> None:
    users_before = dict(BASE.users)
    delta = FeedDelta("1", "2", (UserRemoved("alice"), TokenRevoked("j", 1.0), AgentDisabled("a")))
    apply_delta(BASE, delta, "s")
    assert dict(BASE.users) == users_before
    assert BASE.version == "1"
    assert BASE.revoked_tokens == {"jti-old": 1800000000.0}
    assert BASE.disabled_agents == frozenset({"helpdesk-bot"})


def test_tables_no_change_touches_are_shared_not_copied() -> None:
    after = apply_delta(BASE, FeedDelta("1", "2", (TokenRevoked("j", 1.0),)), "s")
    assert after.users is BASE.users
    assert after.disabled_agents is BASE.disabled_agents


def test_changes_already_in_effect_are_no_ops() -> None:
    delta = FeedDelta(
        "1",
        "2",
        (UserRemoved("nobody"), AgentEnabled("never-disabled"), TokenUnrevoked("never-revoked")),
    )
    after = apply_delta(BASE, delta, "s")
    assert after.users == BASE.users
    assert after.disabled_agents == BASE.disabled_agents
    assert after.revoked_tokens == BASE.revoked_tokens


def test_later_change_to_the_same_user_wins() -> None:
    delta = FeedDelta(
        "1", "2", (UserUpserted("dave", ("a:b",)), UserRemoved("dave"), UserUpserted("dave", ()))
    )
    assert apply_delta(BASE, delta, "s").users["dave"] == UserEntry(GrantSet([]))


def test_delta_for_another_version_is_rejected() -> None:
    message = apply_error(UserRemoved("alice"), from_version="0")
    assert "applies to version '0', but the feed held is version '1'" in message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            UserUpserted("alice", ("tickets:",)),
            "grpc://feed:50051: delta '1' -> '2': changes[0]: users.alice.permissions[0]:",
        ),
        (UserUpserted(" alice", ()), "users: ' alice': ids must be non-empty and printable"),
        (UserUpserted("", ()), "users: '': ids must be non-empty and printable"),
        (UserRemoved("a\nb"), "users: 'a\\nb': ids must be non-empty and printable"),
        (AgentDisabled("bot\t"), "agents: 'bot\\t': ids must be non-empty and printable"),
        (AgentEnabled(""), "agents: '': ids must be non-empty and printable"),
        (TokenRevoked("", 1.0), "revoked_tokens: token ids must be non-empty"),
        (TokenRevoked("j", float("nan")), "revoked_tokens.j: must be the token's exp"),
        (TokenRevoked("j", float("inf")), "revoked_tokens.j: must be the token's exp"),
        (TokenUnrevoked(""), "revoked_tokens: token ids must be non-empty"),
    ],
)
def test_invalid_change_is_rejected_with_the_json_feeds_words(change: object, message: str) -> None:
    assert message in apply_error(change)


def test_one_invalid_change_rejects_the_whole_delta() -> None:
    message = apply_error(UserRemoved("alice"), UserUpserted("carol", ("",)))
    assert "changes[1]: users.carol.permissions[0]" in message
    assert "alice" in BASE.users


@pytest.mark.parametrize(
    ("version", "message"), [("", "must be a non-empty string"), ("1", "must differ")]
)
def test_delta_without_a_new_version_is_rejected(version: str, message: str) -> None:
    assert message in apply_error(version=version)


def test_small_delta_on_a_large_feed_validates_only_what_it_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = {f"user-{i}": {"permissions": [f"group:{i}:read"]} for i in range(20_000)}
    big = feed({"version": "1", "users": users})
    # Count permission checks: a feed of a million users must not be re-validated for a
    # one-user change (the timing of that is in the README's figures, not asserted here).
    checked: list[object] = []
    real_problem = snapshot_module.permission_problem

    def counting_problem(text: object, *, allow_wildcard: bool) -> str | None:
        checked.append(text)
        return real_problem(text, allow_wildcard=allow_wildcard)

    monkeypatch.setattr(snapshot_module, "permission_problem", counting_problem)
    delta = FeedDelta("1", "2", (UserRemoved("user-7"), UserUpserted("new", ("tickets:read",))))
    after = apply_delta(big, delta, "s")
    assert checked == ["tickets:read"]
    assert "user-7" not in after.users and len(after.users) == 20_000
    assert after.users["user-8"] is big.users["user-8"]


# --- computing -----------------------------------------------------------------------


def test_diff_then_apply_gives_the_new_feed() -> None:
    new = feed(
        {
            "version": "2",
            "users": {
                "alice": {"permissions": ["tickets:read", "tickets:write"]},
                "carol": {"permissions": []},
            },
            "agents": {"report-bot": {"disabled": True}},
            "revoked_tokens": {"jti-new": 1800000600},
        }
    )
    delta = diff_snapshots(BASE, new)
    assert (delta.from_version, delta.version) == ("1", "2")
    assert set(delta.changes) >= {UserRemoved("bob"), AgentEnabled("helpdesk-bot")}
    assert apply_delta(BASE, delta, "s") == new


def test_diff_of_equal_feeds_has_no_changes() -> None:
    same = feed(
        {
            "version": "2",
            "users": {
                "bob": {"permissions": ["tickets:*"], "disabled": True},
                "alice": {"permissions": ["tickets:read"]},
            },
            "agents": {"helpdesk-bot": {"disabled": True}, "other": {"disabled": False}},
            "revoked_tokens": {"jti-old": 1800000000},
        }
    )
    assert diff_snapshots(BASE, same).changes == ()


# --- messages ------------------------------------------------------------------------


def test_snapshot_round_trips_through_its_message() -> None:
    message = feed_pb2.Snapshot.FromString(snapshot_to_message(BASE).SerializeToString())
    assert snapshot_from_message(message, "s") == BASE


def test_delta_round_trips_through_its_message() -> None:
    delta = FeedDelta(
        "1",
        "2",
        (
            UserUpserted("carol", ("tickets:write",), True),
            UserRemoved("bob"),
            AgentDisabled("a"),
            AgentEnabled("helpdesk-bot"),
            TokenRevoked("j", 1800000600.5),
            TokenUnrevoked("jti-old"),
        ),
    )
    message = feed_pb2.Delta.FromString(delta_to_message(delta).SerializeToString())
    assert delta_from_message(message, "s") == delta


def snapshot_message_error(message: feed_pb2.Snapshot) -> str:
    with pytest.raises(FeedError) as info:
        snapshot_from_message(message, "grpc://feed:50051")
    return str(info.value)


def test_streamed_snapshot_is_validated_like_a_feed_file() -> None:
    bad_permission = feed_pb2.Snapshot(
        version="1", users=[feed_pb2.User(id="alice", permissions=["tickets::read"])]
    )
    assert "grpc://feed:50051: users.alice.permissions[0]:" in snapshot_message_error(
        bad_permission
    )
    assert "version: must be a non-empty string" in snapshot_message_error(feed_pb2.Snapshot())
    bad_id = feed_pb2.Snapshot(version="1", users=[feed_pb2.User(id="alice ")])
    assert "ids must be non-empty and printable" in snapshot_message_error(bad_id)


def test_streamed_snapshot_listing_a_user_twice_is_rejected() -> None:
    # A second entry must not re-enable a user the first one disabled.
    twice = feed_pb2.Snapshot(
        version="1",
        users=[feed_pb2.User(id="bob", disabled=True), feed_pb2.User(id="bob")],
    )
    assert "users: 'bob': listed twice" in snapshot_message_error(twice)
    jti_twice = feed_pb2.Snapshot(
        version="1",
        revoked_tokens=[
            feed_pb2.RevokedToken(jti="j", exp=2),
            feed_pb2.RevokedToken(jti="j", exp=1),
        ],
    )
    assert "revoked_tokens: 'j': listed twice" in snapshot_message_error(jti_twice)


def test_delta_message_with_an_empty_change_is_rejected() -> None:
    message = feed_pb2.Delta(from_version="1", version="2", changes=[feed_pb2.Change()])
    with pytest.raises(FeedError, match=r"changes\[0\]: no known change set"):
        delta_from_message(message, "s")
