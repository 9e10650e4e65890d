"""The reference feed publisher: a JSON feed file served over ``FeedService.Watch``.

``extauthz feed-serve --from users.json --listen 127.0.0.1:50051`` runs it. It is meant
for demos and tests, and as a worked example for a bridge from an IdP or a SCIM source;
such a bridge keeps the same shape and replaces only where the feed comes from:

1. hold the current ``FeedSnapshot`` (a version names one content, never reuse one);
2. on a change at the source, ``publish`` the new snapshot (it is diffed against the
   old one) or ``publish_delta`` the changes: the delta goes to every watcher and into a
   bounded history;
3. answer each ``Watch`` with what the caller is missing (a heartbeat if it is current,
   the deltas since its version if the history reaches back that far, else the whole
   snapshot), then with every later delta, and a heartbeat when nothing happens.

The file is polled and compared by content digest (``FileFeedSource``): a change is
validated whole, and a file that does not parse or validate is logged and ignored, so
the last good feed keeps being served.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from extauthz.errors import FeedError
from extauthz.feed.cache import FeedCache
from extauthz.feed.delta import FeedDelta, apply_delta, diff_snapshots
from extauthz.feed.file_source import FileFeedSource
from extauthz.feed.snapshot import FeedSnapshot
from extauthz.feed.sources import RefreshOutcome
from extauthz.feed.v1 import feed_pb2, feed_pb2_grpc
from extauthz.feed.wire import delta_to_message, snapshot_to_message

log = logging.getLogger("extauthz.feed.publisher")

# A watcher this far behind is cut off; it resubscribes and resumes from its version.
_MAX_QUEUED = 1000


@dataclass(eq=False)
class _Watcher:
    # None ends the stream: the publisher is stopping, or the watcher fell too far behind.
    queue: asyncio.Queue[feed_pb2.WatchResponse | None] = field(default_factory=asyncio.Queue)


class FeedPublisher:
    """Serves one feed to any number of watchers. Everything runs on one event loop, so
    the snapshot, the history and the watcher list change together between two awaits."""

    def __init__(
        self,
        snapshot: FeedSnapshot,
        *,
        heartbeat: float = 5.0,
        history: int = 100,
        token_file: Path | None = None,
    ) -> None:
        self.heartbeat = heartbeat
        self.token_file = token_file
        self._snapshot = snapshot
        # The last ``history`` deltas, oldest first, each starting where the previous one
        # ended and the last ending at the current version: what lets a client resume.
        self._history: deque[FeedDelta] = deque(maxlen=history)
        self._watchers: set[_Watcher] = set()
        # The whole-snapshot answer, built once per version: with a million users it
        # takes seconds, and every new or fallen-behind watcher needs the same one.
        self._snapshot_message: feed_pb2.WatchResponse | None = None
        self._server: Any = None
        self.port = 0

    @property
    def snapshot(self) -> FeedSnapshot:
        return self._snapshot

    # --- changing the feed ----------------------------------------------------------

    def publish(self, new: FeedSnapshot, delta: FeedDelta | None = None) -> FeedDelta | None:
        """Make ``new`` the current feed and push the delta to every watcher. Returns the
        delta, or None when nothing changed. ``delta`` may be given precomputed (see
        ``FilePublisher``); it is used only if it starts from the current version. Raises
        FeedError for a new feed that keeps the version but changes the content (clients
        holding that version would never learn of it)."""
        if delta is None or delta.from_version != self._snapshot.version:
            delta = diff_snapshots(self._snapshot, new)
        if new.version == self._snapshot.version:
            if delta.changes:
                raise FeedError(f"version {new.version!r}: content changed but version did not")
            return None
        self._commit(new, delta)
        return delta

    def publish_delta(self, delta: FeedDelta) -> FeedSnapshot:
        """Apply ``delta`` to the current feed and push it: for a bridge whose source
        reports changes (SCIM events, say) rather than whole feeds, at the cost of the
        changes alone. Returns the new feed. Raises FeedError, changing nothing, for a
        delta that is invalid or not from the current version."""
        new = apply_delta(self._snapshot, delta, "publish_delta")
        self._commit(new, delta)
        return new

    def _commit(self, new: FeedSnapshot, delta: FeedDelta) -> None:
        if any(new.version in (d.from_version, d.version) for d in self._history):
            # A version seen before: "the deltas since version X" would be ambiguous, so
            # forget the history; clients behind get a whole snapshot.
            self._history.clear()
        self._history.append(delta)
        self._snapshot = new
        self._snapshot_message = None
        self.broadcast(feed_pb2.WatchResponse(delta=delta_to_message(delta)))
        log.info(
            "feed published",
            extra={
                "feed_version": new.version,
                "changes": len(delta.changes),
                "watchers": len(self._watchers),
            },
        )

    def broadcast(self, message: feed_pb2.WatchResponse) -> None:
        """Send ``message`` to every watcher as it is (``publish`` is the usual way in)."""
        for watcher in list(self._watchers):
            if watcher.queue.qsize() >= _MAX_QUEUED:
                self._watchers.discard(watcher)
                watcher.queue.put_nowait(None)
            else:
                watcher.queue.put_nowait(message)

    def catch_up(self, after_version: str) -> list[feed_pb2.WatchResponse] | FeedSnapshot:
        """What a client holding ``after_version`` gets first (see feed.proto): a heartbeat,
        the deltas since that version, or (returned as the snapshot itself, since turning
        a large one into a message takes a while) the current snapshot."""
        if after_version and after_version == self._snapshot.version:
            return [self._heartbeat()]
        deltas = list(self._history)
        for i, delta in enumerate(deltas):
            if after_version and delta.from_version == after_version:
                return [feed_pb2.WatchResponse(delta=delta_to_message(d)) for d in deltas[i:]]
        return self._snapshot

    async def _snapshot_answer(self, snapshot: FeedSnapshot) -> feed_pb2.WatchResponse:
        cached = self._snapshot_message
        if cached is not None and cached.snapshot.version == snapshot.version:
            return cached
        # Off the event loop: a million users take seconds, and the other watchers'
        # heartbeats and deltas must keep flowing meanwhile.
        message = await asyncio.to_thread(
            lambda: feed_pb2.WatchResponse(snapshot=snapshot_to_message(snapshot))
        )
        if snapshot is self._snapshot:
            self._snapshot_message = message
        return message

    def _heartbeat(self) -> feed_pb2.WatchResponse:
        return feed_pb2.WatchResponse(heartbeat=feed_pb2.Heartbeat(version=self._snapshot.version))

    # --- the gRPC service -----------------------------------------------------------

    async def Watch(  # the RPC's name, as the generated code looks it up
        self, request: feed_pb2.WatchRequest, context: Any
    ) -> AsyncIterator[feed_pb2.WatchResponse]:
        if not self._authorized(context.invocation_metadata()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bearer token required")
        watcher = _Watcher()
        # Registered before the catch-up is chosen, with no await in between: no delta can
        # fall between what the catch-up covers and what the queue gets.
        self._watchers.add(watcher)
        try:
            first = self.catch_up(request.after_version)
            if isinstance(first, FeedSnapshot):
                # Deltas published while this is built queue up behind it, and they start
                # from exactly this snapshot's version.
                yield await self._snapshot_answer(first)
            else:
                for message in first:
                    yield message
            while True:
                try:
                    queued = await asyncio.wait_for(watcher.queue.get(), self.heartbeat)
                except TimeoutError:
                    yield self._heartbeat()
                    continue
                if queued is None:
                    return
                yield queued
        finally:
            self._watchers.discard(watcher)

    def _authorized(self, metadata: Any) -> bool:
        if self.token_file is None:
            return True
        # Read per call, so a rotated token takes effect without a restart.
        try:
            expected = self.token_file.read_text().strip()
        except OSError as err:
            log.error("cannot read the token file; refusing", extra={"error": str(err)})
            return False
        presented = dict(metadata or ()).get("authorization", "")
        scheme, _, token = presented.partition(" ")
        # Constant-time, so the comparison does not tell an attacker how much was right.
        return (
            bool(expected)
            and scheme.lower() == "bearer"
            and hmac.compare_digest(token.encode(), expected.encode())
        )

    async def start(self, listen: str) -> int:
        """Listen on ``listen`` (host:port; port 0 picks a free one). Returns the port."""
        # No SO_REUSEPORT: a second publisher on a busy port must fail, not silently
        # share the port (and its watchers) with the first.
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        feed_pb2_grpc.add_FeedServiceServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        try:
            self.port = self._server.add_insecure_port(listen)
        except RuntimeError as err:  # how grpc reports a bind failure
            self._server = None
            raise OSError(f"cannot listen on {listen}: {err}") from err
        await self._server.start()
        log.info("feed publisher listening", extra={"listen": listen, "port": self.port})
        return self.port

    async def stop(self, grace: float = 2.0) -> None:
        """End every stream cleanly (clients then reconnect elsewhere or later), stop."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)
        self._watchers.clear()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None


class FilePublisher:
    """A ``FeedPublisher`` fed from a JSON feed file, polled every ``poll`` seconds."""

    def __init__(
        self,
        path: Path,
        *,
        poll: float = 1.0,
        heartbeat: float = 5.0,
        history: int = 100,
        token_file: Path | None = None,
    ) -> None:
        self.path = path
        self.poll = poll
        self._file = FileFeedSource(path)
        self._loaded = FeedCache()
        # Raises FeedError: without a first good feed there is nothing to serve.
        self._file.refresh(self._loaded, time.time())
        snapshot = self._loaded.state.snapshot
        assert snapshot is not None
        self.publisher = FeedPublisher(
            snapshot, heartbeat=heartbeat, history=history, token_file=token_file
        )
        self._task: asyncio.Task[None] | None = None

    def _load(self, current: FeedSnapshot) -> tuple[FeedSnapshot, FeedDelta] | None:
        """Read the file; the new feed and its delta from ``current``, or None if the file
        is unchanged. Raises FeedError for an invalid one. Blocking (a worker thread)."""
        if self._file.refresh(self._loaded, time.time()) is not RefreshOutcome.SUCCESS:
            return None
        new = self._loaded.state.snapshot
        assert new is not None
        return new, diff_snapshots(current, new)

    async def check_file(self) -> FeedDelta | None:
        """Read the file once and publish what changed. Logs and ignores an invalid file."""
        try:
            # Parsing and diffing a large feed take a while; keep serving meanwhile.
            loaded = await asyncio.to_thread(self._load, self.publisher.snapshot)
            return None if loaded is None else self.publisher.publish(*loaded)
        except FeedError as err:
            log.error("feed file rejected; serving the last good one", extra={"error": str(err)})
            return None

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            await self.check_file()

    async def start(self, listen: str) -> int:
        port = await self.publisher.start(listen)
        self._task = asyncio.create_task(self._poll_loop(), name="feed-file-poll")
        return port

    async def stop(self, grace: float = 2.0) -> None:
        if self._task is not None:
            self._task.cancel()
            # wait(), not await: the task's own CancelledError is expected, ours is not.
            await asyncio.wait([self._task])
            self._task = None
        await self.publisher.stop(grace)
