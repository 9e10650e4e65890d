"""Keeps fetched issuer keys current: at start, on a timer, and on an unknown ``kid``.

Each issuer with ``jwks_url`` or ``discovery`` is fetched at start and then every
``keys_refresh`` (or the response's ``Cache-Control: max-age``, clamped to
``keys_refresh_min``..``keys_refresh_max``). A failed fetch keeps the last good keys and is
retried sooner, with backoff. A token naming a ``kid`` the issuer's keys lack triggers one
refetch, at most once per ``unknown_kid_refetch`` per issuer; requests arriving meanwhile
share that fetch rather than start their own, so a flood of made-up kids costs the IdP one
request per interval. Key sets are published whole through ``publish``, on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from extauthz.config import IssuerConfig
from extauthz.errors import KeysError
from extauthz.metrics import Metrics
from extauthz.tokens.keys import KeySet
from extauthz.tokens.remote_keys import RemoteKeys

log = logging.getLogger("extauthz.keys")

# How long a request that named an unknown kid waits for the refetch it triggered: half
# the example Envoy ext_authz timeout (1 s), so the deny it may end in reaches the client as
# the decision line records it, instead of Envoy's own 503 at the timeout. The fetch goes
# on for the requests after it.
REFETCH_WAIT = 0.5
_RETRY_FIRST = 1.0


class _IssuerState:
    def __init__(self, config: IssuerConfig) -> None:
        self.config = config
        self.remote = RemoteKeys(config)
        self.fetched_at: float | None = None  # wall clock, for the age metric
        self.next_refresh = 0.0  # monotonic
        self.retry_delay = _RETRY_FIRST
        self.last_refetch = -float("inf")  # monotonic
        self.inflight: asyncio.Task[bool] | None = None
        # Fetches are numbered as they start. A periodic refresh and a refetch for an
        # unknown kid can overlap; the answer of the one that started last is the newest,
        # and one that started earlier but finishes later must not undo it.
        self.fetches_started = 0
        self.newest_applied = 0


class KeyRefresher:
    def __init__(
        self,
        issuers: Iterable[IssuerConfig],
        publish: Callable[[KeySet], None],
        metrics: Metrics,
    ) -> None:
        self._publish = publish
        self._metrics = metrics
        self._issuers = {i.issuer: _IssuerState(i) for i in issuers if i.key_source != "file"}
        for issuer, state in self._issuers.items():
            metrics.track_issuer(issuer, functools.partial(_age, state))
        self._changed = asyncio.Event()

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._issuers)

    async def fetch_all(self) -> None:
        """One fetch of every issuer, concurrently (at start)."""
        await asyncio.gather(*(self._fetch(state) for state in self._issuers.values()))

    async def run(self) -> None:
        """Refresh each issuer when it is due, until cancelled."""
        while True:
            now = time.monotonic()
            due = [s for s in self._issuers.values() if s.next_refresh <= now]
            if due:
                await asyncio.gather(*(self._fetch(s) for s in due))
                continue
            wait = min((s.next_refresh for s in self._issuers.values()), default=now + 3600)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait - now)

    async def reconfigure(
        self, issuers: Iterable[IssuerConfig], current: Mapping[str, KeySet]
    ) -> dict[str, KeySet]:
        """Adopt a reloaded policy's issuers and return the keys of every remote one.

        Issuers that are new, or whose keys are now fetched differently, are fetched at
        once; when one cannot be, KeysError names it and nothing changes, so a reload
        never swaps in an issuer without keys. The others keep their keys and schedule.
        """
        adopted: dict[str, _IssuerState] = {}
        keys: dict[str, KeySet] = {}
        to_fetch: list[_IssuerState] = []
        for config in issuers:
            if config.key_source == "file":
                continue
            state = self._issuers.get(config.issuer)
            if state is not None and _fetch_settings(state.config) == _fetch_settings(config):
                state.config = config
                adopted[config.issuer] = state
                if config.issuer in current:
                    keys[config.issuer] = current[config.issuer]
            else:
                to_fetch.append(_IssuerState(config))
        results = await asyncio.gather(
            *(asyncio.to_thread(s.remote.fetch) for s in to_fetch), return_exceptions=True
        )
        for state, result in zip(to_fetch, results, strict=True):
            if isinstance(result, KeysError):
                raise KeysError(f"issuer {state.config.issuer!r}: {result}") from result
            if isinstance(result, BaseException):
                raise result
            assert result.key_set is not None  # a first fetch has nothing to be unchanged from
            self._scheduled(state, result.max_age)
            adopted[state.config.issuer] = state
            keys[state.config.issuer] = result.key_set
        for issuer in set(self._issuers) - set(adopted):
            self._metrics.keys_age.remove(issuer)
        for state in to_fetch:
            issuer = state.config.issuer
            self._metrics.track_issuer(issuer, functools.partial(_age, state))
            self._metrics.keys_refreshes.labels(issuer, "success").inc()
            self._metrics.issuer_keys.labels(issuer).set(len(keys[issuer].keys))
        self._issuers = adopted
        self._changed.set()
        return keys

    async def refetch(self, issuer: str) -> bool:
        """Fetch ``issuer``'s keys again for a token they could not verify, within the
        rate limit. True when new keys were published (worth deciding again)."""
        state = self._issuers.get(issuer)
        if state is None:
            return False  # keys from a file: nothing to fetch
        if state.inflight is None:
            now = time.monotonic()
            if now - state.last_refetch < state.config.unknown_kid_refetch:
                return False
            state.last_refetch = now
            state.inflight = asyncio.create_task(self._fetch(state), name=f"keys-{issuer}")
            state.inflight.add_done_callback(lambda _: setattr(state, "inflight", None))
        try:
            return await asyncio.wait_for(asyncio.shield(state.inflight), REFETCH_WAIT)
        except TimeoutError:
            return False

    @staticmethod
    def _scheduled(state: _IssuerState, max_age: float | None) -> float:
        """Record a successful fetch and schedule the next; returns the interval."""
        config = state.config
        interval = config.keys_refresh if max_age is None else max_age
        interval = min(max(interval, config.keys_refresh_min), config.keys_refresh_max)
        state.next_refresh = time.monotonic() + interval
        state.retry_delay = _RETRY_FIRST
        state.fetched_at = time.time()
        return interval

    async def _fetch(self, state: _IssuerState) -> bool:
        issuer = state.config.issuer
        state.fetches_started += 1
        number = state.fetches_started
        try:
            fetched = await asyncio.to_thread(state.remote.fetch)
        except KeysError as err:
            self._metrics.keys_refreshes.labels(issuer, "error").inc()
            state.next_refresh = time.monotonic() + state.retry_delay
            state.retry_delay = min(state.retry_delay * 2, state.config.keys_refresh_min)
            log.error(
                "keys refresh failed; keeping the last good keys",
                extra={"issuer": issuer, "error": str(err)},
            )
            return False
        if self._issuers.get(issuer) is not state:
            return False  # a reload replaced this issuer while the fetch was under way
        if number < state.newest_applied:
            # Superseded: a fetch that started after this one has already answered, and
            # these keys may be the ones it replaced (a key rotated in meanwhile).
            log.info("keys fetched out of order; keeping the newer ones", extra={"issuer": issuer})
            return False
        state.newest_applied = number
        interval = self._scheduled(state, fetched.max_age)
        if fetched.key_set is None:
            self._metrics.keys_refreshes.labels(issuer, "not_modified").inc()
            return False
        self._publish(fetched.key_set)
        self._metrics.keys_refreshes.labels(issuer, "success").inc()
        self._metrics.issuer_keys.labels(issuer).set(len(fetched.key_set.keys))
        log.info(
            "keys loaded",
            extra={
                "issuer": issuer,
                "kids": sorted(fetched.key_set.keys),
                "source": fetched.key_set.source,
                "next_refresh_s": round(interval, 3),
            },
        )
        return True


def _fetch_settings(config: IssuerConfig) -> tuple[object, ...]:
    return (
        config.jwks_url,
        config.discovery,
        config.keys_refresh,
        config.keys_refresh_min,
        config.keys_refresh_max,
        config.fetch_timeout,
        config.ca_file,
    )


def _age(state: _IssuerState) -> float | None:
    return None if state.fetched_at is None else max(0.0, time.time() - state.fetched_at)
