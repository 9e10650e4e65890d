"""The feed streamed from a ``FeedService.Watch`` server (``feed.source: grpc://host:port``).

One long call at a time. The first message says where we stand (a snapshot, the deltas we
missed, or a heartbeat saying we are current); every later one is a change or a
heartbeat. Each is validated before it touches the cache, and an invalid one changes
nothing: we report it, end the call and subscribe again for a whole snapshot, while the
last good feed keeps serving until it goes stale. A lost connection is retried with
exponential backoff and jitter, resuming from the version we hold.

See ``proto/extauthz/feed/v1/feed.proto`` for the protocol's exact semantics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable
from typing import Any

import grpc

from extauthz.config import FeedConfig
from extauthz.errors import FeedError
from extauthz.feed.cache import FeedCache
from extauthz.feed.delta import apply_delta
from extauthz.feed.sources import FeedReport, RefreshOutcome
from extauthz.feed.v1 import feed_pb2, feed_pb2_grpc
from extauthz.feed.wire import delta_from_message, snapshot_from_message

log = logging.getLogger("extauthz.feed.stream")


def backoff_delay(failures: int, initial: float, maximum: float) -> float:
    """The wait before the next attempt after ``failures`` failed ones in a row: doubling
    from ``initial`` up to ``maximum``, drawn between half and all of that ("equal
    jitter"), so many replicas that lost the same server do not return in lockstep, yet
    none retries at once."""
    step = min(maximum, initial * 2 ** min(failures, 30))
    return random.uniform(step / 2, step)


class GrpcFeedSource:
    """Keeps a ``FeedCache`` in step with a feed server. Implements ``StreamedFeedSource``.

    ``backoff_initial`` and ``backoff_max`` bound the wait between attempts (doubling from
    the first to the second, each drawn between half and all of it so that many replicas
    do not reconnect in lockstep); the doubling starts over once a call has delivered a
    valid first message. A call silent for longer than ``idle_timeout`` (default
    ``2 * feed.refresh + feed.timeout``; the server's heartbeat must be shorter than
    ``feed.refresh``) is taken for a dead connection and replaced.
    """

    def __init__(
        self,
        feed: FeedConfig,
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        idle_timeout: float | None = None,
    ) -> None:
        self.feed = feed
        self.source = feed.source
        self.target = feed.source.removeprefix("grpc://")
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.idle_timeout = (
            idle_timeout if idle_timeout is not None else 2 * feed.refresh + feed.timeout
        )
        self._options = [
            # feed.max_bytes bounds each message, so an oversized snapshot is refused by
            # gRPC before it is buffered whole.
            ("grpc.max_receive_message_length", feed.max_bytes),
            # We reconnect ourselves, with our backoff; gRPC's own would hide the outage.
            ("grpc.enable_retries", 0),
        ]
        # Set when the last message could not be applied: resubscribing from the version
        # we hold would replay the same message, so ask for a whole snapshot instead.
        self._want_snapshot = False
        # Whether the current call has delivered a valid first message.
        self._synced = False

    async def run(self, cache: FeedCache, report: FeedReport, clock: Callable[[], float]) -> None:
        """Keep ``cache`` current until cancelled; never returns on its own and raises
        nothing but CancelledError. Every failure is passed to ``report`` as ERROR."""
        failures = 0
        me = asyncio.current_task()
        while True:
            try:
                await self._watch_once(cache, report, clock)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # every failure is reported; none ends the feed for good
                # gRPC can turn our own cancellation into an RPC error (CANCELLED) on the way
                # out of a call: stopping must still stop us, without a spurious report.
                if me is not None and me.cancelling():
                    raise asyncio.CancelledError from err
                report(RefreshOutcome.ERROR, self._describe(err))
            if self._synced:
                failures = 0
            await asyncio.sleep(backoff_delay(failures, self.backoff_initial, self.backoff_max))
            failures += 1

    async def _watch_once(
        self, cache: FeedCache, report: FeedReport, clock: Callable[[], float]
    ) -> None:
        """One call, until it ends. Returns when the server ends it; raises
        FeedError, AioRpcError or TimeoutError otherwise. Sets ``_synced`` once the first
        message has been applied (the backoff then starts over)."""
        self._synced = False
        if self.feed.ca_file is not None:
            # grpc:// is plaintext; carrying on without the TLS the config asks for would
            # silently drop a security setting, so refuse instead (the feed goes stale).
            raise FeedError(f"{self.source}: ca_file is not supported for a grpc:// feed")
        metadata = self._metadata()
        held = cache.state.snapshot
        after = "" if held is None or self._want_snapshot else held.version
        async with grpc.aio.insecure_channel(self.target, options=self._options) as channel:
            stub: Any = feed_pb2_grpc.FeedServiceStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Watch(feed_pb2.WatchRequest(after_version=after), metadata=metadata)
            try:
                while True:
                    response = await asyncio.wait_for(call.read(), self.idle_timeout)
                    if response is grpc.aio.EOF:
                        log.info("feed stream ended by the server; reconnecting")
                        return
                    kind = await self._apply(response, cache, report, clock)
                    if not self._synced:
                        self._synced = True
                        self._want_snapshot = False
                        # Which of the three answers we got says whether resuming worked.
                        log.info(
                            "feed stream synced",
                            extra={"after_version": after, "first": kind, "source": self.source},
                        )
            except FeedError:
                self._want_snapshot = True
                raise
            finally:
                call.cancel()

    async def _apply(
        self,
        response: feed_pb2.WatchResponse,
        cache: FeedCache,
        report: FeedReport,
        clock: Callable[[], float],
    ) -> str:
        """Apply one message; returns its kind. Raises FeedError with the cache untouched."""
        kind = response.WhichOneof("message")
        held = cache.state.snapshot
        if kind == "snapshot":
            # A large feed takes a moment to validate: keep the event loop (and the checks
            # it serves) going meanwhile. Only this task writes the cache.
            snapshot = await asyncio.to_thread(
                snapshot_from_message, response.snapshot, self.source
            )
            cache.accept(snapshot, clock())
            report(RefreshOutcome.SUCCESS, None)
        elif kind == "delta":
            delta = delta_from_message(response.delta, self.source)
            if held is None:
                raise FeedError(f"{self.source}: a delta arrived before any snapshot")
            cache.accept(apply_delta(held, delta, self.source), clock())
            report(RefreshOutcome.SUCCESS, None)
        elif kind == "heartbeat":
            version = response.heartbeat.version
            if held is None or version != held.version:
                have = "none" if held is None else repr(held.version)
                raise FeedError(
                    f"{self.source}: heartbeat for version {version!r}, but the feed held "
                    f"is version {have}"
                )
            cache.confirm(clock())
            report(RefreshOutcome.NOT_MODIFIED, None)
        else:
            raise FeedError(f"{self.source}: a message with nothing set")
        return str(kind)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """The bearer credential, read afresh for every call (a rotated Secret is picked up
        on the next reconnect). Raises FeedError when it is configured but unusable."""
        if self.feed.credentials_file is not None:
            try:
                token = self.feed.credentials_file.read_text().strip()
            except (OSError, UnicodeDecodeError) as err:
                raise FeedError(
                    f"{self.source}: credentials_file {self.feed.credentials_file}: "
                    f"cannot read: {err}"
                ) from err
            where = f"credentials_file {self.feed.credentials_file}"
        elif self.feed.credentials_env is not None:
            token = os.environ.get(self.feed.credentials_env, "").strip()
            where = f"credentials_env {self.feed.credentials_env}"
        else:
            return ()
        # A header value: visible ASCII only, or gRPC would refuse the call less clearly.
        if not token or not all("!" <= c <= "~" for c in token):
            raise FeedError(f"{self.source}: {where}: must hold a token of visible ASCII")
        return (("authorization", f"Bearer {token}"),)

    def _describe(self, err: Exception) -> FeedError:
        if isinstance(err, FeedError):
            return err
        if isinstance(err, TimeoutError):
            return FeedError(f"{self.source}: no message for {self.idle_timeout:g}s; reconnecting")
        if not isinstance(err, grpc.aio.AioRpcError):
            # A bug, not a feed problem: keep the traceback for whoever fixes it.
            log.error("feed stream failed unexpectedly", exc_info=err)
            return FeedError(f"{self.source}: unexpected error: {err!r}")
        code = err.code()
        details = err.details() or ""
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            details += f" (feed.max_bytes is {self.feed.max_bytes})"
        return FeedError(f"{self.source}: {code.name}: {details}")
