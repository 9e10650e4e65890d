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
import functools
import logging
import time
from collections.abc import Callable, Iterable

from extauthz.config import IssuerConfig
from extauthz.errors import KeysError
from extauthz.metrics import Metrics
from extauthz.tokens.keys import KeySet
from extauthz.tokens.remote_keys import RemoteKeys

log = logging.getLogger("extauthz.keys")

# How long a request that named an unknown kid waits for the refetch it triggered. Envoy's
# ext_authz timeout is usually well under a second; past this the request is denied and
# the fetch completes for the requests after it.
REFETCH_WAIT = 1.0
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
            if not self._issuers:
                await asyncio.Event().wait()  # nothing to refresh: wait for cancellation
            await asyncio.sleep(min(s.next_refresh for s in self._issuers.values()) - now)

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

    async def _fetch(self, state: _IssuerState) -> bool:
        issuer = state.config.issuer
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
        config = state.config
        interval = config.keys_refresh if fetched.max_age is None else fetched.max_age
        interval = min(max(interval, config.keys_refresh_min), config.keys_refresh_max)
        state.next_refresh = time.monotonic() + interval
        state.retry_delay = _RETRY_FIRST
        state.fetched_at = time.time()
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


def _age(state: _IssuerState) -> float | None:
    return None if state.fetched_at is None else max(0.0, time.time() - state.fetched_at)
