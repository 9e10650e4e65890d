"""How long from a change at the feed's source to the first decision that reflects it?

Each round revokes the token of a live delegated call and times, from the moment of the
change, until ``decide()`` on that token answers ``token_revoked``. Decisions are taken
every millisecond on the event loop, as the server's Checks would be, so the figures have
1 ms resolution. The change comes at a random moment, so polling shows its real spread.

Three ways of delivering the feed:

* ``file poll``: the feed file is rewritten; ``FileFeedSource`` re-reads it every
  ``--refresh`` (what ``feed.source: path`` does).
* ``stream, bridge``: a bridge publishes the change (``FeedPublisher.publish_delta``) and
  ``GrpcFeedSource`` receives the delta over a real gRPC stream on 127.0.0.1: the path an
  IdP or SCIM bridge takes.
* ``stream, file``: ``extauthz feed-serve`` polls the file every ``--poll`` and streams the
  delta: what the reference publisher adds on top.

``--users`` sets the size of the feed: a polled file is parsed whole on every change, a
delta is not. No thresholds: compare runs on the same machine.

    make bench-propagation   # or: .venv/bin/python benchmarks/bench_propagation.py --rounds 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from extauthz.config import Config, load_config
from extauthz.decision import PolicyView, decide
from extauthz.demo.issuer import LocalIssuer
from extauthz.errors import FeedError, Reason
from extauthz.feed.cache import FeedCache
from extauthz.feed.delta import FeedDelta, TokenRevoked
from extauthz.feed.file_source import FileFeedSource
from extauthz.feed.publisher import FilePublisher
from extauthz.feed.sources import RefreshOutcome
from extauthz.feed.stream_source import GrpcFeedSource
from extauthz.model import RequestAttributes
from extauthz.server import load_key_sets
from extauthz.tokens.keys import KeySet

REPO = Path(__file__).resolve().parents[1]
HOST = "tickets.example.test"
AUDIENCE = "https://tickets.example.test"
USER = "alice"


class Feed:
    """The feed document a round changes: ``users`` users and a growing revocation list."""

    def __init__(self, path: Path, users: int) -> None:
        self.path = path
        self.version = 1
        self.users: dict[str, Any] = {
            f"user-{i}": {"permissions": ["tickets:read", f"group:{i % 100}:read"]}
            for i in range(users)
        }
        self.users[USER] = {"permissions": ["tickets:read", "tickets:write"]}
        self.revoked: dict[str, float] = {}
        self.write()

    def revoke(self, jti: str) -> None:
        self.version += 1
        self.revoked[jti] = time.time() + 600
        self.write()

    def write(self) -> None:
        document = {"version": str(self.version), "users": self.users}
        document["revoked_tokens"] = self.revoked
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document))
        os.replace(tmp, self.path)  # a poll never sees half a file


class Bench:
    def __init__(self, workdir: Path, users: int) -> None:
        shutil.copytree(REPO / "deploy" / "extauthz", workdir, dirs_exist_ok=True)
        self.issuer = LocalIssuer()
        self.issuer.write_jwks(workdir / "keys" / "jwks.json")
        self.config: Config = load_config(workdir / "config.yaml")
        self.key_sets: dict[str, KeySet] = load_key_sets(self.config)
        self.feed = Feed(workdir / "feed" / "bench.json", users)

    def request(self) -> tuple[str, RequestAttributes]:
        """A fresh delegated call (its own jti) that is allowed until that jti is revoked."""
        jti = f"bench-{random.getrandbits(64):016x}"
        token = self.issuer.token(
            sub=USER, audience=AUDIENCE, scope="tickets:read", client_id="support-agent", jti=jti
        )
        headers = {"authorization": f"Bearer {token}"}
        return jti, RequestAttributes("GET", HOST, "/tickets/1", headers)

    def reason(self, cache: FeedCache, request: RequestAttributes) -> Reason:
        view = PolicyView(self.config, self.key_sets, cache.state)
        return decide(request, view, time.time()).reason

    async def round(
        self, cache: FeedCache, change: Callable[[str], Awaitable[float]], spread: float
    ) -> float:
        """One change, timed from the moment it is in place at the source (``change``
        returns that ``perf_counter``) until the first deny. Seconds."""
        jti, request = self.request()
        await wait_for(lambda: self.reason(cache, request) is Reason.ALLOWED, 30)
        # Land the change at a random point of the source's cycle.
        await asyncio.sleep(random.uniform(0, spread))
        started = await change(jti)
        await wait_for(lambda: self.reason(cache, request) is Reason.TOKEN_REVOKED, 60)
        return time.perf_counter() - started


async def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the change never reached the decision")
        await asyncio.sleep(0.001)


def fail_on_error(outcome: RefreshOutcome, error: FeedError | None) -> None:
    if error is not None:
        raise SystemExit(f"feed source failed: {error}")


@contextlib.asynccontextmanager
async def polled(bench: Bench, refresh: float) -> AsyncIterator[FeedCache]:
    """The file source on a timer, as the server runs it (parse off the event loop)."""
    cache = FeedCache()
    source = FileFeedSource(bench.feed.path)
    source.refresh(cache, time.time())

    async def loop() -> None:
        while True:
            await asyncio.sleep(refresh)
            await asyncio.to_thread(source.refresh, cache, time.time())

    task = asyncio.create_task(loop())
    try:
        yield cache
    finally:
        task.cancel()
        await asyncio.wait([task])


@contextlib.asynccontextmanager
async def streamed(bench: Bench, poll: float) -> AsyncIterator[tuple[FeedCache, FilePublisher]]:
    publisher = FilePublisher(bench.feed.path, poll=poll, heartbeat=5.0)
    port = await publisher.start("127.0.0.1:0")
    feed = replace(bench.config.feed, source=f"grpc://127.0.0.1:{port}", kind="grpc")
    cache = FeedCache()
    task = asyncio.create_task(GrpcFeedSource(feed).run(cache, fail_on_error, time.time))
    try:
        await wait_for(lambda: cache.state.snapshot is not None, 60)
        yield cache, publisher
    finally:
        task.cancel()
        await asyncio.wait([task])
        await publisher.stop(grace=0.5)


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return f"{name:<34} {statistics.median(ms):>10.1f} {p90:>10.1f} {ms[-1]:>10.1f}"


async def main(rounds: int, users: int, refresh: float, poll: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), users)
        results: list[tuple[str, list[float]]] = []

        # The change is in place once the new file has been renamed over the old one.
        async def rewrite(jti: str) -> float:
            bench.feed.revoke(jti)
            return time.perf_counter()

        async with polled(bench, refresh) as cache:
            times = [await bench.round(cache, rewrite, refresh) for _ in range(rounds)]
            results.append((f"file poll, refresh {refresh:g}s", times))

        async with streamed(bench, poll=3600.0) as (cache, file_publisher):
            publisher = file_publisher.publisher

            # A bridge has the change in hand: the clock starts as it publishes it (apply,
            # push, receive, apply), with no file in between.
            async def publish(jti: str) -> float:
                current = publisher.snapshot.version
                change = TokenRevoked(jti, time.time() + 600)
                started = time.perf_counter()
                publisher.publish_delta(FeedDelta(current, f"{current}+{jti}", (change,)))
                return started

            times = [await bench.round(cache, publish, 1.0) for _ in range(rounds)]
            results.append(("stream, bridge publishes", times))

        async with streamed(bench, poll=poll) as (cache, _):
            times = [await bench.round(cache, rewrite, poll) for _ in range(rounds)]
            results.append((f"stream, feed-serve --poll {poll:g}s", times))

    print(
        f"feed change -> first decision reflecting it; {rounds} rounds, {users + 1} users "
        f"({platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs)"
    )
    print(f"{'source':<34} {'median ms':>10} {'p90 ms':>10} {'max ms':>10}")
    for name, times in results:
        print(summary(name, times))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--users", type=int, default=1000, help="users in the feed")
    parser.add_argument("--refresh", type=float, default=1.0, help="file poll interval, s")
    parser.add_argument("--poll", type=float, default=1.0, help="feed-serve poll interval, s")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.users, args.refresh, args.poll))
