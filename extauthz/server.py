"""Lifecycle: load config and keys, start gRPC and HTTP, refresh the feed, drain on stop.

Health: the gRPC health service (overall and ``envoy.service.auth.v3.Authorization``) and
``/readyz`` report SERVING once config, keys and a first feed are loaded. On SIGTERM or
SIGINT both turn NOT_SERVING; checks are still answered for ``server.shutdown_delay``, then
new RPCs are refused and in-flight checks get ``server.shutdown_grace`` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from extauthz.config import Config, FeedConfig, load_config
from extauthz.decision_log import BackgroundDecisionLog
from extauthz.errors import ConfigError, FeedError, KeysError
from extauthz.feed.file_source import FileFeedSource
from extauthz.feed.http_source import HttpFeedSource
from extauthz.feed.last_good import load_snapshot, save_snapshot
from extauthz.feed.sources import PolledFeedSource, RefreshOutcome, StreamedFeedSource
from extauthz.feed.stream_source import GrpcFeedSource
from extauthz.http_endpoints import HttpEndpoints
from extauthz.key_refresh import KeyRefresher
from extauthz.metrics import Metrics
from extauthz.reload import load_reload, watched_digest
from extauthz.runtime_metrics import track_event_loop_tasks
from extauthz.service import (
    AuthorizationServicer,
    CheckHandler,
    Runtime,
    add_authorization_servicer,
)
from extauthz.tokens.keys import KeySet, load_jwks_file

log = logging.getLogger("extauthz.server")
AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization"


def load_key_sets(config: Config) -> dict[str, KeySet]:
    """Load the JWKS file of every issuer that has one. Raises ConfigError naming the
    file and key. Issuers whose keys are fetched start with none."""
    return {
        i.issuer: load_jwks_file(i.issuer, i.jwks_file)
        for i in config.issuers.values()
        if i.jwks_file is not None
    }


def feed_source_for(feed: FeedConfig) -> PolledFeedSource | StreamedFeedSource:
    if feed.kind == "http":
        return HttpFeedSource(feed)
    if feed.kind == "grpc":
        return GrpcFeedSource(feed)
    return FileFeedSource(feed.path, feed.max_bytes)


class Server:
    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry | None = None,
        *,
        worker: bool = False,
    ) -> None:
        # As one of ``serve --workers N``: share the ports with the other workers
        # (SO_REUSEPORT) and the metrics through prometheus-client's multiprocess files.
        self.worker = worker
        self.runtime = Runtime(config, load_key_sets(config))
        self.metrics = Metrics(registry or CollectorRegistry(), multiprocess=worker)
        self.metrics.set_config(config.policy_version, config.mode)
        keys_loaded_at = time.time()
        for issuer, key_set in self.runtime.key_sets.items():
            # Keys from a file are read once, at start: they are as old as the process.
            self.metrics.issuer_keys.labels(issuer).set(len(key_set.keys))
            self.metrics.track_issuer(issuer, lambda: time.time() - keys_loaded_at)
            self.metrics.keys_refreshes.labels(issuer, "success").inc()
        self.keys = KeyRefresher(config.issuers.values(), self._publish_keys, self.metrics)
        self.metrics.track_feed_age(lambda: self.runtime.feed.state.age(time.time()))
        self.decision_log = BackgroundDecisionLog(
            sys.stdout,
            max_pending=config.decision_log.max_pending,
            when_full=config.decision_log.when_full,
            on_drop=self.metrics.decision_log_dropped.inc,
        )
        self.metrics.track(self.metrics.decision_log_pending, lambda: self.decision_log.pending)
        self.handler = CheckHandler(
            self.runtime, self.metrics, self.decision_log, refetch_keys=self.keys.refetch
        )
        self.feed_source = feed_source_for(config.feed)
        # Set when a new snapshot was accepted and not yet written to feed.snapshot_file.
        self._snapshot_unsaved = False
        self.health = health_aio.HealthServicer()
        exposed = self.metrics.registry
        if worker:
            exposed = CollectorRegistry()
            MultiProcessCollector(exposed)  # type: ignore[no-untyped-call]
        self.http = HttpEndpoints(exposed, lambda: self.runtime.ready, reuse_port=worker)
        self._watched = b""
        self._reload_lock = asyncio.Lock()
        self._grpc: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.grpc_port = 0
        self.http_port = 0

    @property
    def config(self) -> Config:
        """The running config (it changes on reload)."""
        return self.runtime.config

    def refresh_feed(self) -> RefreshOutcome:
        """One refresh of a polled feed source (blocking: run it in a worker thread)."""
        assert not isinstance(self.feed_source, StreamedFeedSource)
        try:
            outcome = self.feed_source.refresh(self.runtime.feed, time.time())
        except FeedError as err:
            self.record_feed(RefreshOutcome.ERROR, err)
            return RefreshOutcome.ERROR
        self.record_feed(outcome, None)
        return outcome

    def record_feed(self, outcome: RefreshOutcome, error: FeedError | None) -> None:
        """What any feed source reports: metrics, a log line, the snapshot to save."""
        if error is not None:
            log.error("feed rejected; keeping the last good one", extra={"error": str(error)})
        snapshot = self.runtime.feed.state.snapshot
        if outcome is RefreshOutcome.SUCCESS and snapshot is not None:
            self._snapshot_unsaved = True
            self._set_feed_gauges()
            log.info(
                "feed loaded",
                extra={"feed_version": snapshot.version, "users": len(snapshot.users)},
            )
        self.metrics.feed_refreshes.labels(outcome.value).inc()

    def _set_feed_gauges(self) -> None:
        snapshot = self.runtime.feed.state.snapshot
        if snapshot is not None:
            self.metrics.feed_users.set(len(snapshot.users))
            self.metrics.feed_revoked_tokens.set(len(snapshot.revoked_tokens))
            self.metrics.feed_disabled_agents.set(len(snapshot.disabled_agents))

    def restore_feed(self) -> None:
        """Load the last-good snapshot, if one is configured and saved (blocking)."""
        path = self.config.feed.snapshot_file
        if path is None or self.runtime.feed.state.snapshot is not None:
            return
        try:
            saved = load_snapshot(path)
        except FeedError as err:
            log.error("saved feed unusable; ignoring it", extra={"error": str(err)})
            return
        if saved is not None:
            snapshot, fetched_at = saved
            self.runtime.feed.accept(snapshot, time.time(), fetched_at=fetched_at)
            self._set_feed_gauges()
            log.info(
                "saved feed restored",
                extra={
                    "feed_version": snapshot.version,
                    "users": len(snapshot.users),
                    "age_s": round(max(0.0, time.time() - fetched_at), 3),
                },
            )

    def save_feed(self) -> None:
        """Write the current snapshot to feed.snapshot_file if it changed (blocking)."""
        path = self.config.feed.snapshot_file
        state = self.runtime.feed.state
        if path is None or not self._snapshot_unsaved or state.snapshot is None:
            return
        self._snapshot_unsaved = False
        try:
            save_snapshot(path, state.snapshot, state.refreshed_at or time.time())
        except OSError as err:
            self._snapshot_unsaved = True
            log.error("cannot save the feed snapshot", extra={"path": str(path), "error": str(err)})

    async def start(self) -> None:
        track_event_loop_tasks(self.metrics.registry, asyncio.get_running_loop())
        # Keys and feed at once; a large feed takes a moment to parse, so off the loop.
        keys_fetched = asyncio.create_task(self.keys.fetch_all())
        await asyncio.to_thread(self.restore_feed)
        if not isinstance(self.feed_source, StreamedFeedSource):
            await asyncio.to_thread(self.refresh_feed)
        await keys_fetched
        self._grpc = grpc.aio.server(
            maximum_concurrent_rpcs=self.config.server.max_inflight,
            options=[
                ("grpc.max_receive_message_length", 8 * 1024 * 1024),
                # Off unless workers share the port: a second extauthz on the same port
                # must fail to start, not silently take half the traffic.
                ("grpc.so_reuseport", 1 if self.worker else 0),
            ],
        )
        add_authorization_servicer(AuthorizationServicer(self.handler), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        try:
            self.grpc_port = self._grpc.add_insecure_port(self.config.server.grpc_listen)
        except RuntimeError as err:  # grpc reports a failed bind this way
            raise OSError(f"cannot listen on {self.config.server.grpc_listen}: {err}") from err
        if self.grpc_port == 0:
            raise OSError(f"cannot listen on {self.config.server.grpc_listen}")
        await self._grpc.start()
        self.http_port = await self.http.start(self.config.server.http_listen)
        await self._update_health()
        if isinstance(self.feed_source, StreamedFeedSource):
            self._tasks.append(
                asyncio.create_task(
                    self.feed_source.run(self.runtime.feed, self._streamed_report, time.time),
                    name="feed-stream",
                )
            )
        self._tasks.append(asyncio.create_task(self._feed_loop(), name="feed-refresh"))
        self._tasks.append(asyncio.create_task(self.keys.run(), name="keys-refresh"))
        if self.worker:
            self._tasks.append(asyncio.create_task(self._sample_gauges(), name="gauges"))
        self._watched = await asyncio.to_thread(watched_digest, self.config)
        if self.config.server.reload_check > 0:
            self._tasks.append(asyncio.create_task(self._watch_config(), name="config-watch"))
        log.info(
            "serving",
            extra={
                "grpc": self.config.server.grpc_listen,
                "grpc_port": self.grpc_port,
                "http_port": self.http_port,
                "policy_version": self.config.policy_version,
                "mode": self.config.mode,
                "ready": self.runtime.ready,
            },
        )

    async def _update_health(self) -> None:
        serving = self.runtime.ready and not self._stopping.is_set()
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)
        await self.health.set(AUTHORIZATION_SERVICE, status)

    async def reload(self, trigger: str) -> bool:
        """Load the config file again and swap it in whole; on any problem keep the
        running policy. True when the new policy is in force."""
        async with self._reload_lock:
            running = self.config
            self._watched = await asyncio.to_thread(watched_digest, running)
            try:
                reloaded = await asyncio.to_thread(load_reload, running)
                remote_keys = await self.keys.reconfigure(
                    reloaded.config.issuers.values(), self.runtime.key_sets
                )
            except (ConfigError, KeysError) as err:
                self.metrics.config_reloads.labels("error").inc()
                log.error(
                    "config rejected; keeping the running policy",
                    extra={"trigger": trigger, "error": str(err)},
                )
                return False
            config = reloaded.config
            self.runtime.swap_policy(config, {**reloaded.file_key_sets, **remote_keys})
            for issuer, key_set in reloaded.file_key_sets.items():
                self.metrics.issuer_keys.labels(issuer).set(len(key_set.keys))
            self.metrics.set_config(config.policy_version, config.mode)
            self.metrics.config_reloads.labels("success").inc()
            self.metrics.config_restart_required.set(1 if reloaded.restart_required else 0)
            log.info(
                "config reloaded",
                extra={
                    "trigger": trigger,
                    "policy_version": config.policy_version,
                    "previous_policy_version": running.policy_version,
                    "mode": config.mode,
                },
            )
            if reloaded.restart_required:
                log.warning(
                    "config changes need a restart to take effect; running values kept",
                    extra={"keys": list(reloaded.restart_required)},
                )
            await self._update_health()
            return True

    async def _sample_gauges(self) -> None:
        while not self._stopping.is_set():
            self.metrics.sample_gauges()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 1.0)

    async def _watch_config(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.server.reload_check)
            if self._stopping.is_set():
                return
            if await asyncio.to_thread(watched_digest, self.config) != self._watched:
                await self.reload("file_change")

    def _publish_keys(self, key_set: KeySet) -> None:
        self.runtime.publish_keys(key_set)
        if self._grpc is not None:  # serving: readiness may have changed
            self._tasks.append(asyncio.create_task(self._update_health()))

    def _streamed_report(self, outcome: RefreshOutcome, error: FeedError | None) -> None:
        self.record_feed(outcome, error)
        if outcome is RefreshOutcome.SUCCESS:
            self._tasks.append(asyncio.create_task(self._update_health()))

    async def _feed_loop(self) -> None:
        """Polls a polled source; for every kind, keeps health current and saves the
        snapshot (at most once a refresh interval, however often a stream changes it)."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.feed.refresh)
            if self._stopping.is_set():
                return
            if not isinstance(self.feed_source, StreamedFeedSource):
                await asyncio.to_thread(self.refresh_feed)
            await asyncio.to_thread(self.save_feed)
            await self._update_health()
            self._tasks = [t for t in self._tasks if not t.done()]

    async def stop(self) -> None:
        self._stopping.set()
        await self.health.enter_graceful_shutdown()
        self.http.draining = True
        # Still answering, but NOT_SERVING: a proxy that health-checks us moves its traffic
        # elsewhere before the listener closes, so no check meets a refused connection.
        if self.config.server.shutdown_delay > 0:
            await asyncio.sleep(self.config.server.shutdown_delay)
        if self._grpc is not None:
            await self._grpc.stop(self.config.server.shutdown_grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.http.stop()
        if self.worker:  # the last second's checks, into the shared metric files
            self.metrics.sample_gauges()
        # Every line of a check that was answered is written before the process ends.
        if not await asyncio.to_thread(self.decision_log.close, 5.0):
            log.error(
                "decision lines still unwritten at exit", extra={"lines": self.decision_log.pending}
            )
        log.info("stopped")


async def serve(config_path: str, *, worker: bool = False) -> None:
    """Run until SIGTERM or SIGINT. Raises ConfigError when the config or keys are invalid."""
    server = Server(load_config(config_path), worker=worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before start: a SIGTERM that arrives just after "serving" is logged must still drain.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[bool]] = set()

    def reload_on_sighup() -> None:
        task = asyncio.create_task(server.reload("sighup"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_on_sighup)
    await server.start()
    await stop.wait()
    log.info("shutting down", extra={"grace_s": server.config.server.shutdown_grace})
    await server.stop()
