"""The HTTP feed source against a real local HTTP server that also misbehaves."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_http import LocalHttpServer, Reply, local_http_server

from extauthz.config import FeedConfig
from extauthz.errors import FeedError
from extauthz.feed.cache import FeedCache
from extauthz.feed.http_source import HttpFeedSource
from extauthz.feed.sources import RefreshOutcome

FEED_V1 = json.dumps(
    {"version": "1", "users": {"alice": {"permissions": ["tickets:read"]}}}
).encode()
FEED_V2 = json.dumps({"version": "2", "users": {"alice": {"permissions": []}}}).encode()


@pytest.fixture
def server() -> Iterator[LocalHttpServer]:
    with local_http_server() as server:
        yield server


def source_for(server: LocalHttpServer, **settings: object) -> HttpFeedSource:
    feed = FeedConfig(
        source=server.url("/feed.json"),
        issuer="https://idp",
        kind="http",
        **settings,  # type: ignore[arg-type]
    )
    sleeps: list[float] = []
    source = HttpFeedSource(feed, sleep=sleeps.append, jitter=lambda: 1.0)
    source.sleeps = sleeps  # type: ignore[attr-defined]
    return source


def test_first_refresh_loads_the_feed(server: LocalHttpServer) -> None:
    server.replies["/feed.json"] = Reply(body=FEED_V1, headers={"ETag": '"v1"'})
    cache = FeedCache()
    assert source_for(server).refresh(cache, 100.0) is RefreshOutcome.SUCCESS
    assert cache.state.snapshot is not None
    assert cache.state.snapshot.version == "1"
    assert cache.state.refreshed_at == 100.0


def test_etag_is_sent_back_and_a_304_confirms_the_feed_without_a_body(
    server: LocalHttpServer,
) -> None:
    def reply(seen: object) -> Reply:
        if getattr(seen, "headers", {}).get("if-none-match") == '"v1"':
            return Reply(304, headers={"ETag": '"v1"'})
        return Reply(body=FEED_V1, headers={"ETag": '"v1"'})

    server.replies["/feed.json"] = reply
    cache, source = FeedCache(), source_for(server)
    source.refresh(cache, 100.0)
    snapshot = cache.state.snapshot
    assert source.refresh(cache, 130.0) is RefreshOutcome.NOT_MODIFIED
    assert cache.state.snapshot is snapshot
    assert cache.state.refreshed_at == 130.0
    sent = [r.headers.get("if-none-match") for r in server.paths_requested("/feed.json")]
    assert sent == [None, '"v1"']


def test_same_body_without_an_etag_counts_as_not_modified(server: LocalHttpServer) -> None:
    server.replies["/feed.json"] = Reply(body=FEED_V1)
    cache, source = FeedCache(), source_for(server)
    source.refresh(cache, 100.0)
    assert source.refresh(cache, 110.0) is RefreshOutcome.NOT_MODIFIED
    assert cache.state.refreshed_at == 110.0


def test_a_changed_feed_replaces_the_old_one(server: LocalHttpServer) -> None:
    server.replies["/feed.json"] = Reply(body=FEED_V1, headers={"ETag": '"v1"'})
    cache, source = FeedCache(), source_for(server)
    source.refresh(cache, 100.0)
    server.replies["/feed.json"] = Reply(body=FEED_V2, headers={"ETag": '"v2"'})
    assert source.refresh(cache, 110.0) is RefreshOutcome.SUCCESS
    assert cache.state.snapshot is not None and cache.state.snapshot.version == "2"


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(body=b"{not json"), "not valid JSON"),
        (Reply(body=b'{"version": "3", "users": []}'), "users: must be an object"),
        (Reply(404, b"gone"), "HTTP 404"),
        (Reply(401, b""), "HTTP 401"),
        (Reply(body=FEED_V2, misbehave="truncate"), "body cut short"),
        (Reply(500, b"oops"), "HTTP 500 (after 3 attempts)"),
        (Reply(302, headers={"Location": "http://127.0.0.1:1/x"}), "HTTP 302"),
    ],
    ids=[
        "garbage",
        "invalid",
        "not_found",
        "unauthorized",
        "truncated",
        "server_error",
        "redirect",
    ],
)
def test_bad_answers_are_rejected_and_the_last_good_feed_stays(
    server: LocalHttpServer, reply: Reply, message: str
) -> None:
    server.replies["/feed.json"] = Reply(body=FEED_V1)
    cache, source = FeedCache(), source_for(server)
    source.refresh(cache, 100.0)
    good = cache.state
    server.replies["/feed.json"] = reply
    with pytest.raises(FeedError, match=message.replace("(", r"\(").replace(")", r"\)")):
        source.refresh(cache, 110.0)
    assert cache.state is good


def test_server_errors_are_retried_with_growing_jittered_backoff(server: LocalHttpServer) -> None:
    answers = iter([Reply(503), Reply(502), Reply(body=FEED_V1)])
    server.replies["/feed.json"] = lambda seen: next(answers)
    cache, source = FeedCache(), source_for(server)
    assert source.refresh(cache, 100.0) is RefreshOutcome.SUCCESS
    assert source.sleeps == [0.2, 0.4]  # type: ignore[attr-defined]
    assert len(server.paths_requested("/feed.json")) == 3


def test_client_errors_are_not_retried(server: LocalHttpServer) -> None:
    server.replies["/feed.json"] = Reply(403)
    with pytest.raises(FeedError, match="HTTP 403"):
        source_for(server).refresh(FeedCache(), 100.0)
    assert len(server.paths_requested("/feed.json")) == 1


def test_a_hanging_server_times_out(server: LocalHttpServer) -> None:
    server.replies["/feed.json"] = Reply(body=FEED_V1, misbehave="hang")
    with pytest.raises(FeedError, match="timed out"):
        source_for(server, timeout=0.3, retries=0).refresh(FeedCache(), 100.0)


def test_a_server_that_drips_the_body_hits_the_deadline(server: LocalHttpServer) -> None:
    server.replies["/feed.json"] = Reply(body=FEED_V1, misbehave="drip")
    with pytest.raises(FeedError, match="not received within the timeout"):
        source_for(server, timeout=0.5, retries=0).refresh(FeedCache(), 100.0)


def test_an_oversized_feed_is_refused_before_it_is_read_whole(server: LocalHttpServer) -> None:
    big = json.dumps({"version": "1", "users": {f"u{i}": {} for i in range(500)}}).encode()
    server.replies["/feed.json"] = Reply(body=big)
    with pytest.raises(FeedError, match="over the limit of 2048"):
        source_for(server, max_bytes=2048).refresh(FeedCache(), 100.0)


def test_an_unreachable_server_is_reported(server: LocalHttpServer) -> None:
    server.stop()
    with pytest.raises(FeedError, match="after 1 attempts"):
        source_for(server, retries=0).refresh(FeedCache(), 100.0)


def test_bearer_credential_from_a_file_is_sent_and_reread(
    server: LocalHttpServer, tmp_path: Path
) -> None:
    secret = tmp_path / "token"
    secret.write_text("first-secret\n")
    server.replies["/feed.json"] = Reply(body=FEED_V1)
    cache, source = FeedCache(), source_for(server, credentials_file=secret)
    source.refresh(cache, 100.0)
    secret.write_text("rotated-secret")
    source.refresh(cache, 110.0)
    sent = [r.headers.get("authorization") for r in server.paths_requested("/feed.json")]
    assert sent == ["Bearer first-secret", "Bearer rotated-secret"]


def test_bearer_credential_from_the_environment_is_sent(
    server: LocalHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXTAUTHZ_TEST_FEED_TOKEN", "env-secret")
    server.replies["/feed.json"] = Reply(body=FEED_V1)
    source_for(server, credentials_env="EXTAUTHZ_TEST_FEED_TOKEN").refresh(FeedCache(), 1.0)
    assert server.requests[0].headers["authorization"] == "Bearer env-secret"


def test_a_missing_credential_fails_without_asking_the_server(
    server: LocalHttpServer, tmp_path: Path
) -> None:
    with pytest.raises(FeedError, match="cannot read credentials_file"):
        source_for(server, credentials_file=tmp_path / "absent").refresh(FeedCache(), 1.0)
    assert server.requests == []


def test_no_credential_is_sent_unless_configured(server: LocalHttpServer) -> None:
    server.replies["/feed.json"] = Reply(body=FEED_V1)
    source_for(server).refresh(FeedCache(), 1.0)
    assert "authorization" not in server.requests[0].headers


def test_error_messages_never_carry_the_credential(server: LocalHttpServer, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("super-secret-value")
    server.replies["/feed.json"] = Reply(body=b"garbage")
    with pytest.raises(FeedError) as info:
        source_for(server, credentials_file=secret).refresh(FeedCache(), 1.0)
    assert "super-secret-value" not in str(info.value)
