"""A feed fetched over HTTP(S), polled with conditional GETs.

Each refresh is one GET with ``If-None-Match`` (the last accepted ``ETag``): a 304 confirms
the current snapshot without a parse. A 200 body identical to the current one (by digest)
counts the same, for servers that send no ``ETag``. Anything else is parsed and validated
whole before it replaces the current snapshot. Connection failures, timeouts, truncated
bodies, 408, 429 and 5xx are retried within the refresh (exponential backoff, full jitter);
other answers fail at once. A failed refresh raises FeedError and leaves the cache as it was.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable

from extauthz.config import FeedConfig
from extauthz.errors import FeedError
from extauthz.feed.cache import FeedCache
from extauthz.feed.snapshot import parse_feed
from extauthz.feed.sources import RefreshOutcome
from extauthz.http_fetch import FetchFailed, HttpFetcher, bearer_credential

_BACKOFF_BASE = 0.2
_BACKOFF_CAP = 5.0


class HttpFeedSource:
    def __init__(
        self,
        feed: FeedConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.feed = feed
        self._fetcher = HttpFetcher(
            timeout=feed.timeout, max_bytes=feed.max_bytes, ca_file=feed.ca_file
        )
        self._sleep = sleep
        self._jitter = jitter
        self._etag: str | None = None
        self._digest: bytes | None = None

    def refresh(self, cache: FeedCache, now: float) -> RefreshOutcome:
        """Refresh ``cache`` from the URL. Raises FeedError; the cache is then untouched."""
        attempts = self.feed.retries + 1
        for attempt in range(attempts):
            try:
                return self._fetch(cache, now)
            except FetchFailed as err:
                if not err.retryable:
                    raise FeedError(str(err)) from err
                if attempt + 1 == attempts:
                    raise FeedError(f"{err} (after {attempts} attempts)") from err
                # Full jitter: replicas that lost the feed together do not come back at the
                # feed server in lock-step.
                self._sleep(self._jitter() * min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _fetch(self, cache: FeedCache, now: float) -> RefreshOutcome:
        headers = {"Accept": "application/json"}
        headers.update(bearer_credential(self.feed.credentials_file, self.feed.credentials_env))
        have_snapshot = cache.state.snapshot is not None
        if self._etag is not None and have_snapshot:
            headers["If-None-Match"] = self._etag
        fetched = self._fetcher.get(self.feed.source, headers)
        if fetched.status == 304:
            if not have_snapshot:
                raise FetchFailed(f"{self.feed.source}: 304 with no feed to keep", retryable=False)
            cache.confirm(now)
            return RefreshOutcome.NOT_MODIFIED
        etag = fetched.headers.get("ETag")
        digest = hashlib.blake2b(fetched.body, digest_size=16).digest()
        if digest == self._digest and have_snapshot:
            self._etag = etag
            cache.confirm(now)
            return RefreshOutcome.NOT_MODIFIED
        snapshot = parse_feed(fetched.body, self.feed.source)
        cache.accept(snapshot, now)
        self._digest, self._etag = digest, etag
        return RefreshOutcome.SUCCESS
