"""The streamed feed with real parts: a real publisher on 127.0.0.1, a real GrpcFeedSource,
and a real TCP relay between them where a test needs to cut or silence the connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import ISSUER, ROOT

from extauthz.cli import main
from extauthz.config import FeedConfig
from extauthz.errors import FeedError
from extauthz.feed.cache import FeedCache
from extauthz.feed.delta import FeedDelta, TokenRevoked, UserRemoved
from extauthz.feed.publisher import FilePublisher
from extauthz.feed.sources import RefreshOutcome
from extauthz.feed.stream_source import GrpcFeedSource, backoff_delay
from extauthz.feed.v1 import feed_pb2

FEED: dict[str, Any] = {
    "version": "1",
    "users": {
        "alice": {"permissions": ["tickets:read"]},
        "bob": {"permissions": ["tickets:read", "tickets:write"]},
    },
}


def write(path: Path, document: dict[str, Any]) -> Path:
    # Written whole and renamed, as a feed producer should, so a poll never reads half.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document))
    os.replace(tmp, path)
    return path


def changed(**edits: Any) -> dict[str, Any]:
    document = json.loads(json.dumps(FEED))
    document.update(edits)
    return document


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait for ``predicate`` with a deadline (polling, since the state has no events)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.01)


@dataclass
class Subscriber:
    """A GrpcFeedSource running against one address, with what it reported."""

    cache: FeedCache = field(default_factory=FeedCache)
    reports: list[tuple[RefreshOutcome, FeedError | None]] = field(default_factory=list)

    def report(self, outcome: RefreshOutcome, error: FeedError | None) -> None:
        self.reports.append((outcome, error))

    def count(self, outcome: RefreshOutcome) -> int:
        return sum(1 for o, _ in self.reports if o is outcome)

    def errors(self) -> list[str]:
        return [str(e) for o, e in self.reports if o is RefreshOutcome.ERROR]

    @property
    def version(self) -> str | None:
        snapshot = self.cache.state.snapshot
        return None if snapshot is None else snapshot.version

    @property
    def users(self) -> dict[str, Any]:
        snapshot = self.cache.state.snapshot
        return {} if snapshot is None else dict(snapshot.users)


def feed_config(port: int, **overrides: Any) -> FeedConfig:
    settings: dict[str, Any] = {"refresh": 0.2, "max_staleness": 0.5, "timeout": 0.5}
    settings.update(overrides)
    return FeedConfig(f"grpc://127.0.0.1:{port}", ISSUER, kind="grpc", **settings)


@contextlib.asynccontextmanager
async def subscribed(
    port: int, idle_timeout: float | None = None, **overrides: Any
) -> AsyncIterator[Subscriber]:
    sub = Subscriber()
    source = GrpcFeedSource(
        feed_config(port, **overrides),
        backoff_initial=0.02,
        backoff_max=0.1,
        idle_timeout=idle_timeout,
    )
    task = asyncio.create_task(source.run(sub.cache, sub.report, time.time))
    try:
        yield sub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled()  # run() ends only by cancellation, never by an exception


@contextlib.asynccontextmanager
async def publishing(path: Path, port: int = 0, **options: Any) -> AsyncIterator[FilePublisher]:
    # poll is long: tests call check_file() themselves, so nothing depends on a timer.
    options.setdefault("poll", 60.0)
    options.setdefault("heartbeat", 0.1)
    publisher = FilePublisher(path, **options)
    await publisher.start(f"127.0.0.1:{port}")
    try:
        yield publisher
    finally:
        await publisher.stop(grace=0.1)


class Relay:
    """A TCP relay on 127.0.0.1 that a test can cut (close every connection and refuse new
    ones) or silence (keep connections open but pass nothing: a hung server)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.refusing = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        dst.close()

    def cut(self, *, refuse: bool = True) -> None:
        self.refusing = refuse
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    def silence(self) -> None:
        self._flowing.clear()

    def restore(self) -> None:
        self.refusing = False
        self._flowing.set()

    async def close(self) -> None:
        self.cut()
        self._flowing.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._server.close()
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def relayed(upstream_port: int) -> AsyncIterator[Relay]:
    relay = Relay(upstream_port)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


def synced_by(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """(after_version asked for, kind of the first answer) for every call that synced."""
    return [
        (r.after_version, r.first)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "feed stream synced"
    ]


@pytest.fixture
def feed_file(tmp_path: Path) -> Path:
    return write(tmp_path / "users.json", FEED)


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="extauthz.feed")


# --- connecting and following changes --------------------------------------------------


async def test_subscriber_gets_a_full_snapshot_on_connect(feed_file: Path) -> None:
    async with publishing(feed_file) as pub, subscribed(pub.publisher.port) as sub:
        await eventually(lambda: sub.version == "1", "first snapshot")
        assert sorted(sub.users) == ["alice", "bob"]
        assert sub.users["bob"].permissions.grants_permission("tickets:write")
        assert sub.reports[0] == (RefreshOutcome.SUCCESS, None)


async def test_user_agent_and_token_changes_arrive_as_deltas(
    feed_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with publishing(feed_file) as pub, subscribed(pub.publisher.port) as sub:
        await eventually(lambda: sub.version == "1", "first snapshot")
        snapshot_before = sub.cache.state.snapshot

        write(
            feed_file,
            changed(
                version="2",
                users={
                    "alice": {"permissions": ["tickets:read", "tickets:write"]},
                    "carol": {"permissions": ["tickets:read"], "disabled": True},
                },
                agents={"helpdesk-bot": {"disabled": True}},
                revoked_tokens={"jti-1": time.time() + 600},
            ),
        )
        delta = await pub.check_file()
        assert delta is not None and len(delta.changes) == 5
        await eventually(lambda: sub.version == "2", "delta applied")
        snapshot = sub.cache.state.snapshot
        assert snapshot is not None
        assert sorted(snapshot.users) == ["alice", "carol"]
        assert snapshot.users["alice"].permissions.grants_permission("tickets:write")
        assert snapshot.users["carol"].disabled
        assert snapshot.disabled_agents == frozenset({"helpdesk-bot"})
        assert "jti-1" in snapshot.revoked_tokens
        # The old snapshot was not modified in place (requests in flight keep reading it).
        assert snapshot_before is not None and sorted(snapshot_before.users) == ["alice", "bob"]

        write(feed_file, changed(version="3", users={"alice": {"permissions": []}}))
        await pub.check_file()
        await eventually(lambda: sub.version == "3", "second delta applied")
        snapshot = sub.cache.state.snapshot
        assert snapshot is not None
        assert snapshot.disabled_agents == frozenset() and snapshot.revoked_tokens == {}
        # One call the whole time: changes came as deltas on it, not by reconnecting.
        assert synced_by(caplog) == [("", "snapshot")]
        assert sub.errors() == []


async def test_publisher_polls_the_file_and_ignores_an_invalid_one(
    feed_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        publishing(feed_file, poll=0.02) as pub,
        subscribed(pub.publisher.port) as sub,
    ):
        await eventually(lambda: sub.version == "1", "first snapshot")
        feed_file.write_text('{"version": "2", "users": {"alice": {"permissions": [1]}}}')
        await eventually(
            lambda: any("feed file rejected" in r.getMessage() for r in caplog.records),
            "invalid file rejected",
        )
        assert sub.version == "1" and pub.publisher.snapshot.version == "1"
        write(feed_file, changed(version="3", users={"dave": {"permissions": []}}))
        await eventually(lambda: sub.version == "3", "polled change")
        assert sorted(sub.users) == ["dave"]


async def test_publisher_on_a_busy_port_fails_to_start(feed_file: Path) -> None:
    async with publishing(feed_file) as pub:
        with pytest.raises(OSError, match="cannot listen on"):
            await FilePublisher(feed_file).start(f"127.0.0.1:{pub.publisher.port}")


async def test_publisher_refuses_new_content_under_the_same_version(feed_file: Path) -> None:
    async with publishing(feed_file) as pub:
        write(feed_file, changed(users={}))
        assert await pub.check_file() is None
        assert sorted(pub.publisher.snapshot.users) == ["alice", "bob"]


# --- resuming ------------------------------------------------------------------------


async def test_resume_after_a_lost_connection_gets_only_the_missed_deltas(
    feed_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        publishing(feed_file) as pub,
        relayed(pub.publisher.port) as relay,
        subscribed(relay.port) as sub,
    ):
        await eventually(lambda: sub.version == "1", "first snapshot")
        relay.cut()
        write(feed_file, changed(version="2", users={"alice": {"permissions": []}}))
        await pub.check_file()
        write(feed_file, changed(version="3", users={"erin": {"permissions": []}}))
        await pub.check_file()
        await eventually(lambda: len(sub.errors()) > 0, "disconnect noticed")
        relay.restore()
        await eventually(lambda: sub.version == "3", "caught up")
        assert sorted(sub.users) == ["erin"]
        assert synced_by(caplog) == [("", "snapshot"), ("1", "delta")]


async def test_resume_after_the_publisher_restarts_with_the_same_feed(
    feed_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with publishing(feed_file) as pub:
        port = pub.publisher.port
        async with subscribed(port) as sub:
            await eventually(lambda: sub.version == "1", "first snapshot")
            await pub.stop(grace=0.1)
            await eventually(lambda: len(sub.errors()) > 0, "publisher gone")
            async with publishing(feed_file, port=port):
                # The restarted publisher has no history, but version 1 is its current one:
                # a heartbeat says we are up to date, and the feed is fresh again.
                await eventually(lambda: len(synced_by(caplog)) == 2, "resubscribed")
                assert synced_by(caplog) == [("", "snapshot"), ("1", "heartbeat")]
                assert sub.cache.state.is_fresh(time.time(), 0.5)


async def test_resume_after_the_publisher_restarts_with_a_changed_feed_gets_a_snapshot(
    feed_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with publishing(feed_file) as pub:
        port = pub.publisher.port
        async with subscribed(port) as sub:
            await eventually(lambda: sub.version == "1", "first snapshot")
            await pub.stop(grace=0.1)
            write(feed_file, changed(version="7", users={"frank": {"permissions": []}}))
            # A restart forgets the history: version 1 is unknown, so a whole snapshot.
            async with publishing(feed_file, port=port):
                await eventually(lambda: sub.version == "7", "snapshot after restart")
                assert sorted(sub.users) == ["frank"]
                assert synced_by(caplog) == [("", "snapshot"), ("1", "snapshot")]


async def test_version_older_than_the_history_gets_a_full_snapshot(
    feed_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        publishing(feed_file, history=1) as pub,
        relayed(pub.publisher.port) as relay,
        subscribed(relay.port) as sub,
    ):
        await eventually(lambda: sub.version == "1", "first snapshot")
        relay.cut()
        for version in ("2", "3"):
            write(feed_file, changed(version=version, users={f"u{version}": {}}))
            await pub.check_file()
        # The history holds only 2 -> 3; version 1 is too old to resume from.
        assert pub.publisher.catch_up("1") is pub.publisher.snapshot
        await eventually(lambda: len(sub.errors()) > 0, "disconnect noticed")
        relay.restore()
        await eventually(lambda: sub.version == "3", "caught up")
        assert sorted(sub.users) == ["u3"]
        assert synced_by(caplog) == [("", "snapshot"), ("1", "snapshot")]


async def test_snapshot_sent_mid_stream_replaces_the_feed_whole(feed_file: Path) -> None:
    async with publishing(feed_file) as pub, subscribed(pub.publisher.port) as sub:
        await eventually(lambda: sub.version == "1", "first snapshot")
        replacement = feed_pb2.Snapshot(version="x", users=[feed_pb2.User(id="zoe")])
        pub.publisher.broadcast(feed_pb2.WatchResponse(snapshot=replacement))
        await eventually(lambda: sub.version == "x", "replaced")
        assert sorted(sub.users) == ["zoe"]
        assert sub.errors() == []


async def test_a_bridge_can_publish_changes_without_whole_feeds(feed_file: Path) -> None:
    async with publishing(feed_file) as pub, subscribed(pub.publisher.port) as sub:
        await eventually(lambda: sub.version == "1", "first snapshot")
        new = pub.publisher.publish_delta(
            FeedDelta("1", "2", (UserRemoved("bob"), TokenRevoked("jti-9", time.time() + 60)))
        )
        assert sorted(new.users) == ["alice"]
        await eventually(lambda: sub.version == "2", "delta applied")
        assert sorted(sub.users) == ["alice"]
        with pytest.raises(FeedError, match="applies to version '1'"):
            pub.publisher.publish_delta(FeedDelta("1", "3", ()))
        assert pub.publisher.snapshot is new


# --- refusing what is wrong ----------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "message"),
    [
        (
            feed_pb2.Delta(
                from_version="1",
                version="2",
                changes=[
                    feed_pb2.Change(user_removed="alice"),
                    feed_pb2.Change(
                        user_upserted=feed_pb2.User(id="mallory", permissions=["tickets::read"])
                    ),
                ],
            ),
            "changes[1]: users.mallory.permissions[0]",
        ),
        (
            feed_pb2.Delta(
                from_version="0", version="2", changes=[feed_pb2.Change(user_removed="alice")]
            ),
            "applies to version '0', but the feed held is version '1'",
        ),
    ],
)
async def test_invalid_delta_is_rejected_and_the_last_good_feed_stays(
    feed_file: Path, caplog: pytest.LogCaptureFixture, delta: feed_pb2.Delta, message: str
) -> None:
    async with publishing(feed_file) as pub, subscribed(pub.publisher.port) as sub:
        await eventually(lambda: sub.version == "1", "first snapshot")
        good = sub.cache.state.snapshot
        pub.publisher.broadcast(feed_pb2.WatchResponse(delta=delta))
        await eventually(lambda: len(sub.errors()) == 1, "delta rejected")
        assert message in sub.errors()[0]
        assert sub.errors()[0].startswith(f"grpc://127.0.0.1:{pub.publisher.port}: delta")
        assert sub.cache.state.snapshot is good
        # It then asks for a whole snapshot rather than resuming into the same bad delta.
        await eventually(lambda: len(synced_by(caplog)) == 2, "resubscribed")
        assert synced_by(caplog) == [("", "snapshot"), ("", "snapshot")]
        assert sorted(sub.users) == ["alice", "bob"]


async def test_heartbeat_for_another_version_makes_the_subscriber_resync(
    feed_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with publishing(feed_file) as pub, subscribed(pub.publisher.port) as sub:
        await eventually(lambda: sub.version == "1", "first snapshot")
        pub.publisher.broadcast(feed_pb2.WatchResponse(heartbeat=feed_pb2.Heartbeat(version="9")))
        await eventually(lambda: len(synced_by(caplog)) == 2, "resubscribed")
        assert "heartbeat for version '9', but the feed held is version '1'" in sub.errors()[0]


async def test_oversized_message_is_refused(feed_file: Path) -> None:
    users = {f"user-{i:04d}": {"permissions": ["tickets:read"]} for i in range(200)}
    write(feed_file, changed(users=users))
    async with publishing(feed_file) as pub, subscribed(pub.publisher.port, max_bytes=2048) as sub:
        await eventually(lambda: len(sub.errors()) >= 1, "refusal")
        assert "RESOURCE_EXHAUSTED" in sub.errors()[0]
        assert "feed.max_bytes is 2048" in sub.errors()[0]
        assert sub.cache.state.snapshot is None


# --- freshness -----------------------------------------------------------------------


async def test_heartbeats_keep_a_quiet_feed_fresh(feed_file: Path) -> None:
    async with publishing(feed_file, heartbeat=0.05) as pub, subscribed(pub.publisher.port) as sub:
        await eventually(lambda: sub.count(RefreshOutcome.NOT_MODIFIED) >= 8, "heartbeats")
        age = sub.cache.state.age(time.time())
        # Well past max_staleness (0.5 s) since the snapshot, yet fresh: the age is since
        # the last heartbeat, never much more than one heartbeat interval.
        assert age is not None and age < 0.5
        assert sub.cache.state.is_fresh(time.time(), 0.5)
        assert sub.errors() == []


async def test_a_silent_server_lets_the_feed_go_stale_and_the_stream_is_replaced(
    feed_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        publishing(feed_file, heartbeat=0.05) as pub,
        relayed(pub.publisher.port) as relay,
        subscribed(relay.port, idle_timeout=0.3) as sub,
    ):
        await eventually(lambda: sub.count(RefreshOutcome.NOT_MODIFIED) >= 1, "heartbeat")
        relay.silence()
        await eventually(
            lambda: not sub.cache.state.is_fresh(time.time(), 0.5), "stale while silent"
        )
        assert sub.version == "1"  # stale, but the last good feed is kept
        await eventually(lambda: any("no message for 0.3s" in e for e in sub.errors()), "timeout")
        relay.restore()
        await eventually(lambda: sub.cache.state.is_fresh(time.time(), 0.5), "fresh again")


async def test_a_dead_server_lets_the_feed_go_stale(feed_file: Path) -> None:
    async with publishing(feed_file, heartbeat=0.05) as pub, subscribed(pub.publisher.port) as sub:
        await eventually(lambda: sub.version == "1", "first snapshot")
        await pub.stop(grace=0.1)
        await eventually(lambda: any("UNAVAILABLE" in e for e in sub.errors()), "unavailable")
        await eventually(lambda: not sub.cache.state.is_fresh(time.time(), 0.5), "stale")
        assert sub.version == "1"


# --- credentials ---------------------------------------------------------------------


async def test_bearer_token_is_required_and_sent(
    feed_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "publisher-token"
    token_file.write_text("s3cret-token\n")
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-it")
    right = tmp_path / "client-token"
    right.write_text("s3cret-token")
    monkeypatch.setenv("FEED_TOKEN", "s3cret-token")
    async with publishing(feed_file, token_file=token_file) as pub:
        port = pub.publisher.port
        for refused in ({}, {"credentials_file": wrong}):
            async with subscribed(port, **refused) as sub:
                await eventually(lambda: len(sub.errors()) >= 1, "refusal")
                assert "UNAUTHENTICATED: bearer token required" in sub.errors()[0]
                assert sub.cache.state.snapshot is None
        for accepted in ({"credentials_file": right}, {"credentials_env": "FEED_TOKEN"}):
            async with subscribed(port, **accepted) as sub:
                await eventually(lambda: sub.version == "1", "accepted")
                assert sub.errors() == []


async def test_unreadable_credentials_file_is_reported(feed_file: Path, tmp_path: Path) -> None:
    async with (
        publishing(feed_file) as pub,
        subscribed(pub.publisher.port, credentials_file=tmp_path / "missing") as sub,
    ):
        await eventually(lambda: len(sub.errors()) >= 1, "error")
        assert "credentials_file" in sub.errors()[0] and "cannot read" in sub.errors()[0]


async def test_rotated_credentials_are_read_again_on_reconnect(
    feed_file: Path, tmp_path: Path
) -> None:
    server_token = tmp_path / "server-token"
    server_token.write_text("first")
    client_token = tmp_path / "client-token"
    client_token.write_text("first")
    async with (
        publishing(feed_file, token_file=server_token) as pub,
        relayed(pub.publisher.port) as relay,
        subscribed(relay.port, credentials_file=client_token) as sub,
    ):
        await eventually(lambda: sub.version == "1", "first snapshot")
        server_token.write_text("second")
        client_token.write_text("second")
        relay.cut(refuse=False)
        synced = sub.count(RefreshOutcome.NOT_MODIFIED)
        # The heartbeat that says we are current again proves the new token was accepted.
        await eventually(lambda: sub.count(RefreshOutcome.NOT_MODIFIED) > synced, "reconnected")
        assert not any("UNAUTHENTICATED" in e for e in sub.errors())


def test_backoff_doubles_with_jitter_up_to_its_bound() -> None:
    for failures, step in [(0, 0.5), (1, 1.0), (3, 4.0), (6, 30.0), (1000, 30.0)]:
        delays = [backoff_delay(failures, 0.5, 30.0) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1  # jittered, not in lockstep


async def test_a_ca_file_is_refused_rather_than_ignored(feed_file: Path, tmp_path: Path) -> None:
    async with (
        publishing(feed_file) as pub,
        subscribed(pub.publisher.port, ca_file=tmp_path / "ca.pem") as sub,
    ):
        await eventually(lambda: len(sub.errors()) >= 1, "refusal")
        assert "ca_file is not supported for a grpc:// feed" in sub.errors()[0]
        assert sub.cache.state.snapshot is None


# --- the command ---------------------------------------------------------------------


def test_feed_serve_refuses_to_start_on_an_invalid_feed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "users.json"
    bad.write_text('{"version": "1", "users": {"alice": {"permissions": "all"}}}')
    assert main(["feed-serve", "--from", str(bad), "--listen", "127.0.0.1:0"]) == 2
    assert "users.alice.permissions: must be a list" in capsys.readouterr().err


def test_feed_serve_refuses_a_malformed_duration(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["feed-serve", "--from", "f", "--listen", "127.0.0.1:0", "--heartbeat", "5"])
    assert "must be a duration like 500ms or 5s" in capsys.readouterr().err


async def test_feed_serve_command_serves_the_file_and_stops_on_sigterm(feed_file: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "extauthz",
        "feed-serve",
        "--from",
        str(feed_file),
        "--listen",
        "127.0.0.1:0",
        "--heartbeat",
        "100ms",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        port = 0
        while not port:
            line = await asyncio.wait_for(process.stderr.readline(), 10)
            assert line, "feed-serve exited before listening"
            record = json.loads(line)
            port = int(record.get("port", 0))
        async with subscribed(port) as sub:
            await eventually(lambda: sub.count(RefreshOutcome.NOT_MODIFIED) >= 1, "heartbeat")
            assert sub.version == "1"
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
