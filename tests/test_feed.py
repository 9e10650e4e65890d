"""The user-permission feed: parsing, the cache and its age, the file source."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import DATA, DEPLOY, write_feed

from extauthz.errors import FeedError
from extauthz.feed.cache import FeedCache, FeedState
from extauthz.feed.file_source import FileFeedSource
from extauthz.feed.snapshot import FeedSnapshot, UserEntry, parse_feed
from extauthz.feed.sources import RefreshOutcome
from extauthz.permissions import GrantSet


def feed_bytes(document: object) -> bytes:
    return json.dumps(document).encode()


def feed_error(document: object | bytes, source: str = "feed.json") -> str:
    raw = document if isinstance(document, bytes) else feed_bytes(document)
    with pytest.raises(FeedError) as info:
        parse_feed(raw, source)
    return str(info.value)


# --- parsing ---------------------------------------------------------------------------


def test_valid_feed_parses_users_permissions_and_disabled_flags() -> None:
    snapshot = parse_feed((DATA / "feed_valid.json").read_bytes(), "feed_valid.json")
    assert snapshot.version == "42"
    assert sorted(snapshot.users) == ["alice", "bob", "carol", "dave", "erin"]
    alice = snapshot.users["alice"]
    assert alice == UserEntry(GrantSet(["tickets:read", "tickets:write"]), disabled=False)
    assert alice.permissions.grants_permission("tickets:write")
    assert snapshot.users["dave"].permissions.grants_permission("tickets:comments:write")
    bob = snapshot.users["bob"]
    assert bob.disabled is True
    assert len(bob.permissions) == 0
    assert snapshot.users["erin"] == UserEntry(GrantSet([]), disabled=False)


def test_example_feed_parses() -> None:
    snapshot = parse_feed((DEPLOY / "feed" / "users.json").read_bytes(), "users.json")
    assert snapshot.version == "1"
    assert snapshot.users["mallory"].disabled is True


def test_identical_permission_sets_are_shared_objects() -> None:
    snapshot = parse_feed((DATA / "feed_valid.json").read_bytes(), "feed_valid.json")
    users = snapshot.users
    # Same set written in another order: one GrantSet object.
    assert users["alice"].permissions is users["carol"].permissions
    assert users["bob"].permissions is users["erin"].permissions
    assert users["alice"].permissions is not users["dave"].permissions


def test_numeric_version_is_accepted_as_a_string() -> None:
    assert parse_feed(feed_bytes({"version": 42, "users": {}}), "f").version == "42"


def test_empty_user_table_is_a_valid_feed() -> None:
    assert parse_feed(feed_bytes({"version": "1", "users": {}}), "f") == FeedSnapshot("1", {})


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"not json", "feed.json: not valid JSON"),
        (b'{"version": "1", "users": {', "feed.json: not valid JSON"),
        (b"", "feed.json: not valid JSON"),
        (b"[" * 100_000, "feed.json: not valid JSON"),
        ([], "feed.json: must be a JSON object"),
        ("users", "feed.json: must be a JSON object"),
        ({"version": "1", "users": {}, "extra": 1}, "feed.json: extra: unknown key"),
        ({"users": {}}, "feed.json: version: must be a non-empty string"),
        ({"version": "", "users": {}}, "feed.json: version: must be a non-empty string"),
        ({"version": True, "users": {}}, "feed.json: version: must be a non-empty string"),
        ({"version": 4.2, "users": {}}, "feed.json: version: must be a non-empty string"),
        ({"version": "1"}, "feed.json: users: must be an object of user id to entry"),
        ({"version": "1", "users": []}, "feed.json: users: must be an object of user id to entry"),
        (
            {"version": "1", "users": {"alice": ["tickets:read"]}},
            "feed.json: users.alice: must be an object",
        ),
        (
            {"version": "1", "users": {"alice": {"permissions": [], "perms": []}}},
            "feed.json: users.alice: perms: unknown key",
        ),
        (
            {"version": "1", "users": {"alice": {"permissions": "tickets:read"}}},
            "feed.json: users.alice.permissions: must be a list",
        ),
        (
            {"version": "1", "users": {"alice": {"permissions": ["tickets:read", 3]}}},
            "feed.json: users.alice.permissions[1]: must be a string, got int",
        ),
        (
            {"version": "1", "users": {"alice": {"permissions": ["tick*"]}}},
            "feed.json: users.alice.permissions[0]: 'tick*': segment 'tick*'",
        ),
        (
            {"version": "1", "users": {"alice": {"permissions": [""]}}},
            "feed.json: users.alice.permissions[0]: must not be empty",
        ),
        (
            {"version": "1", "users": {"alice": {"permissions": [], "disabled": "yes"}}},
            "feed.json: users.alice.disabled: must be true or false",
        ),
        (
            {"version": "1", "users": {"": {"permissions": []}}},
            "feed.json: users: '': ids must be non-empty and printable",
        ),
        (
            {"version": "1", "users": {"eve\r\nx-admin: 1": {"permissions": []}}},
            "ids must be non-empty and printable",
        ),
    ],
)
def test_invalid_feed_is_rejected_with_a_precise_message(document: object, message: str) -> None:
    assert message in feed_error(document)


def test_invalid_entry_is_rejected_even_after_a_valid_one_with_other_permissions() -> None:
    document = {
        "version": "1",
        "users": {
            "alice": {"permissions": ["tickets:read"]},
            "bob": {"permissions": ["tickets:read", "bad perm"]},
        },
    }
    assert "users.bob.permissions[1]" in feed_error(document)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"version": "1", "users": {"bob": {"permissions": ["tickets:read"], "disabled": true},'
        b' "bob": {"permissions": ["tickets:read"]}}}',
        b'{"version": "1", "users": {"bob": {"permissions": [], "disabled": true,'
        b' "disabled": false}}}',
        b'{"version": "1", "users": {"bob": {"permissions": [], "permissions": ["*"]}}}',
        b'{"version": "1", "version": "2", "users": {}}',
    ],
    ids=[
        "user-twice-re-enabled",
        "disabled-twice-in-an-entry",
        "permissions-twice-in-an-entry",
        "version-twice",
    ],
)
def test_feed_with_a_repeated_member_name_is_rejected(raw: bytes) -> None:
    # A lenient reader keeps the last one: a second "bob" would re-enable a disabled bob.
    assert "feed.json: not valid JSON: duplicate member name" in feed_error(raw)


def test_user_ids_that_differ_only_in_case_are_different_users() -> None:
    document = {
        "version": "1",
        "users": {
            "Alice": {"permissions": ["tickets:read"], "disabled": True},
            "alice": {"permissions": ["tickets:write"]},
        },
    }
    snapshot = parse_feed(feed_bytes(document), "f")
    assert snapshot.users["Alice"] == UserEntry(GrantSet(["tickets:read"]), disabled=True)
    assert snapshot.users["alice"] == UserEntry(GrantSet(["tickets:write"]), disabled=False)


@pytest.mark.parametrize("user_id", [" alice", "alice ", " alice "])
def test_user_id_with_surrounding_spaces_is_rejected(user_id: str) -> None:
    # An upstream that trims the header value would read " alice" as "alice".
    message = feed_error({"version": "1", "users": {user_id: {"permissions": []}}})
    assert f"feed.json: users: {user_id!r}: ids must be non-empty and printable" in message


def test_feed_with_a_utf8_byte_order_mark_is_rejected() -> None:
    raw = b"\xef\xbb\xbf" + feed_bytes({"version": "1", "users": {}})
    assert "feed.json: not valid JSON" in feed_error(raw)


# --- the cache and its age ---------------------------------------------------------------

SNAPSHOT = FeedSnapshot("7", {"alice": UserEntry(GrantSet(["tickets:read"]))})


def test_state_before_any_feed_has_no_age_and_is_not_fresh() -> None:
    state = FeedState()
    assert state.age(1000.0) is None
    assert state.is_fresh(1000.0, 120.0) is False


def test_state_age_and_freshness_follow_explicit_now() -> None:
    state = FeedState(SNAPSHOT, refreshed_at=1000.0)
    assert state.age(1000.0) == 0.0
    assert state.age(1030.5) == 30.5
    assert state.is_fresh(1120.0, 120.0) is True  # exactly max_staleness old is still fresh
    assert state.is_fresh(1120.001, 120.0) is False
    # A clock that went backwards does not make a negative age.
    assert state.age(990.0) == 0.0


def test_state_with_a_time_but_no_snapshot_is_not_fresh() -> None:
    assert FeedState(None, refreshed_at=1000.0).is_fresh(1000.0, 120.0) is False


def test_cache_accept_replaces_the_state_whole() -> None:
    cache = FeedCache()
    before = cache.state
    cache.accept(SNAPSHOT, 50.0)
    assert cache.state == FeedState(SNAPSHOT, 50.0)
    assert before == FeedState()  # the old state object was not edited in place


def test_cache_confirm_moves_the_refresh_time_only_when_there_is_a_snapshot() -> None:
    cache = FeedCache()
    cache.confirm(10.0)
    assert cache.state == FeedState()
    cache.accept(SNAPSHOT, 10.0)
    cache.confirm(25.0)
    assert cache.state.snapshot is SNAPSHOT
    assert cache.state.refreshed_at == 25.0


# --- the file source ---------------------------------------------------------------------


def bump_mtime(path: Path) -> None:
    """Make sure a rewrite is seen as a change regardless of timestamp granularity."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def feed_file(tmp_path: Path) -> Path:
    return write_feed(tmp_path / "users.json", "1", {"alice": {"permissions": ["tickets:read"]}})


def test_first_refresh_loads_the_file(feed_file: Path) -> None:
    cache = FeedCache()
    outcome = FileFeedSource(feed_file).refresh(cache, 100.0)
    assert outcome is RefreshOutcome.SUCCESS
    assert cache.state.snapshot is not None
    assert cache.state.snapshot.version == "1"
    assert cache.state.refreshed_at == 100.0
    assert list(cache.state.snapshot.users) == ["alice"]


def test_unchanged_file_is_not_modified_and_refreshes_the_age(feed_file: Path) -> None:
    cache = FeedCache()
    source = FileFeedSource(feed_file)
    source.refresh(cache, 100.0)
    snapshot = cache.state.snapshot

    assert source.refresh(cache, 160.0) is RefreshOutcome.NOT_MODIFIED
    assert cache.state.snapshot is snapshot
    assert cache.state.refreshed_at == 160.0
    assert cache.state.age(170.0) == 10.0


def test_changed_file_is_loaded_with_its_new_version(feed_file: Path) -> None:
    cache = FeedCache()
    source = FileFeedSource(feed_file)
    source.refresh(cache, 100.0)

    write_feed(feed_file, "2", {"alice": {"permissions": []}, "bob": {"permissions": ["x"]}})
    bump_mtime(feed_file)

    assert source.refresh(cache, 110.0) is RefreshOutcome.SUCCESS
    assert cache.state.snapshot is not None
    assert cache.state.snapshot.version == "2"
    assert sorted(cache.state.snapshot.users) == ["alice", "bob"]
    assert cache.state.refreshed_at == 110.0


def test_same_size_rewrite_with_the_same_mtime_is_still_seen(feed_file: Path) -> None:
    # A revocation that keeps the file's size and lands within the timestamp granularity
    # must not be missed: change detection compares content, not stat fields.
    cache = FeedCache()
    source = FileFeedSource(feed_file)
    source.refresh(cache, 100.0)
    before = feed_file.stat()
    feed_file.write_bytes(feed_file.read_bytes().replace(b"tickets:read", b"tickets:none"))
    os.utime(feed_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert feed_file.stat().st_size == before.st_size

    assert source.refresh(cache, 110.0) is RefreshOutcome.SUCCESS
    assert cache.state.snapshot is not None
    alice = cache.state.snapshot.users["alice"]
    assert not alice.permissions.grants_permission("tickets:read")


def test_file_replaced_by_rename_is_loaded(feed_file: Path) -> None:
    cache = FeedCache()
    source = FileFeedSource(feed_file)
    source.refresh(cache, 100.0)
    staged = write_feed(feed_file.with_name("users.json.tmp"), "3", {})
    os.replace(staged, feed_file)

    assert source.refresh(cache, 110.0) is RefreshOutcome.SUCCESS
    assert cache.state.snapshot is not None
    assert cache.state.snapshot.version == "3"


@pytest.mark.parametrize(
    "bad",
    [b"garbage", b'{"version": "2", "users": {"alice": {"permiss', b""],
    ids=["garbage", "truncated", "empty"],
)
def test_bad_file_raises_and_the_last_good_snapshot_stays(feed_file: Path, bad: bytes) -> None:
    cache = FeedCache()
    source = FileFeedSource(feed_file)
    source.refresh(cache, 100.0)
    good = cache.state

    feed_file.write_bytes(bad)
    bump_mtime(feed_file)
    with pytest.raises(FeedError) as info:
        source.refresh(cache, 110.0)
    assert str(feed_file) in str(info.value)
    assert cache.state is good  # not even the refresh time moved
    assert cache.state.age(130.0) == 30.0

    # Still bad on the next poll: still an error, not "not modified".
    with pytest.raises(FeedError):
        source.refresh(cache, 120.0)
    assert cache.state is good


def test_missing_file_raises_and_the_last_good_snapshot_stays(feed_file: Path) -> None:
    cache = FeedCache()
    source = FileFeedSource(feed_file)
    source.refresh(cache, 100.0)
    good = cache.state

    feed_file.unlink()
    with pytest.raises(FeedError) as info:
        source.refresh(cache, 110.0)
    assert str(info.value).startswith(f"{feed_file}: cannot read")
    assert cache.state is good


def test_missing_file_on_first_refresh_leaves_the_cache_empty(tmp_path: Path) -> None:
    cache = FeedCache()
    with pytest.raises(FeedError):
        FileFeedSource(tmp_path / "absent.json").refresh(cache, 1.0)
    assert cache.state == FeedState()


def test_good_file_after_a_bad_one_is_loaded(feed_file: Path) -> None:
    cache = FeedCache()
    source = FileFeedSource(feed_file)
    source.refresh(cache, 100.0)
    feed_file.write_bytes(b"garbage")
    bump_mtime(feed_file)
    with pytest.raises(FeedError):
        source.refresh(cache, 110.0)

    write_feed(feed_file, "9", {})
    bump_mtime(feed_file)
    assert source.refresh(cache, 120.0) is RefreshOutcome.SUCCESS
    assert cache.state.snapshot is not None
    assert cache.state.snapshot.version == "9"


def test_refresh_after_a_failed_first_load_reads_the_file_again(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_bytes(b"garbage")
    cache = FeedCache()
    source = FileFeedSource(path)
    with pytest.raises(FeedError):
        source.refresh(cache, 1.0)
    write_feed(path, "1", {})
    bump_mtime(path)
    assert source.refresh(cache, 2.0) is RefreshOutcome.SUCCESS


# --- revocation and agents in the feed --------------------------------------------------


def test_feed_carries_disabled_agents_and_revoked_token_ids() -> None:
    snapshot = parse_feed(
        feed_bytes(
            {
                "version": "7",
                "users": {},
                "agents": {"helpdesk-bot": {"disabled": True}, "ops-bot": {"disabled": False}},
                "revoked_tokens": {"jti-1": 1_800_000_600, "jti-2": 1_800_000_000.5},
            }
        ),
        "f",
    )
    assert snapshot.disabled_agents == frozenset({"helpdesk-bot"})
    assert snapshot.revoked_tokens == {"jti-1": 1_800_000_600.0, "jti-2": 1_800_000_000.5}


def test_feed_without_agents_or_revocations_has_none() -> None:
    snapshot = parse_feed(feed_bytes({"version": "1", "users": {}}), "f")
    assert snapshot.disabled_agents == frozenset()
    assert snapshot.revoked_tokens == {}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"agents": []}, "feed.json: agents: must be an object of agent id to entry"),
        ({"agents": {"bot": True}}, "feed.json: agents.bot: must be an object"),
        ({"agents": {"bot": {"off": True}}}, "feed.json: agents.bot: off: unknown key"),
        ({"agents": {"bot": {"disabled": 1}}}, "feed.json: agents.bot.disabled: must be true"),
        ({"agents": {" bot": {}}}, "ids must be non-empty and printable"),
        ({"revoked_tokens": ["jti-1"]}, "feed.json: revoked_tokens: must be an object of jti"),
        ({"revoked_tokens": {"": 5}}, "feed.json: revoked_tokens: token ids must be non-empty"),
        ({"revoked_tokens": {"j": "soon"}}, "feed.json: revoked_tokens.j: must be the token's exp"),
        ({"revoked_tokens": {"j": True}}, "feed.json: revoked_tokens.j: must be the token's exp"),
    ],
)
def test_invalid_agents_or_revocations_are_rejected_precisely(
    extra: dict[str, object], message: str
) -> None:
    assert message in feed_error({"version": "1", "users": {}, **extra})


def test_revocations_of_expired_tokens_are_pruned_but_leeway_keeps_them() -> None:
    snapshot = FeedSnapshot("1", {}, revoked_tokens={"old": 100.0, "edge": 190.0, "new": 500.0})
    pruned = snapshot.prune_expired(now=200.0, leeway=30.0)
    assert pruned.revoked_tokens == {"edge": 190.0, "new": 500.0}
    assert pruned.version == "1"


def test_pruning_with_nothing_expired_returns_the_same_snapshot() -> None:
    snapshot = FeedSnapshot("1", {}, revoked_tokens={"new": 500.0})
    assert snapshot.prune_expired(now=200.0, leeway=0.0) is snapshot


# --- the last-good snapshot on disk ------------------------------------------------------


def test_saved_snapshot_reads_back_equal_with_its_fetch_time(tmp_path: Path) -> None:
    from extauthz.feed.last_good import load_snapshot, save_snapshot

    snapshot = FeedSnapshot(
        "12",
        {"alice": UserEntry(GrantSet(["tickets:*"])), "bob": UserEntry(GrantSet([]), True)},
        disabled_agents=frozenset({"helpdesk-bot"}),
        revoked_tokens={"jti-1": 1_800_000_000.0},
    )
    path = tmp_path / "state" / "feed.json"
    save_snapshot(path, snapshot, 1234.5)
    assert load_snapshot(path) == (snapshot, 1234.5)
    assert [p.name for p in path.parent.iterdir()] == ["feed.json"]  # no temporary left


def test_no_saved_snapshot_yet_is_none_and_a_bad_one_is_a_feed_error(tmp_path: Path) -> None:
    from extauthz.feed.last_good import load_snapshot

    assert load_snapshot(tmp_path / "absent.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text('{"feed": {"version": "1", "users": {}}}')
    with pytest.raises(FeedError, match="needs fetched_at and feed"):
        load_snapshot(bad)
    bad.write_text('{"fetched_at": 1, "feed": {"version": "1", "users": {"a": 1}}}')
    with pytest.raises(FeedError, match=r"users\.a: must be an object"):
        load_snapshot(bad)
