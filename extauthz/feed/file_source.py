"""A feed read from a local JSON file, re-read when the file changes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from extauthz.config import MAX_FEED_BYTES
from extauthz.errors import FeedError
from extauthz.feed.cache import FeedCache
from extauthz.feed.snapshot import parse_feed
from extauthz.feed.sources import RefreshOutcome


class FileFeedSource:
    """Reads one file per refresh. Content identical to the current snapshot's (by digest)
    confirms it without parsing; anything else is parsed and validated whole before it
    replaces the current one. Comparing content, not timestamps, means a same-size rewrite
    within the filesystem's timestamp granularity (a revocation, say) is never missed."""

    def __init__(self, path: Path, max_bytes: int = MAX_FEED_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._digest: bytes | None = None

    def refresh(self, cache: FeedCache, now: float) -> RefreshOutcome:
        """Refresh ``cache`` from the file. Raises FeedError; the cache is then untouched."""
        try:
            size = os.stat(self.path).st_size
            if size > self.max_bytes:
                raise FeedError(f"{self.path}: {size} bytes is over max_bytes {self.max_bytes}")
            raw = self.path.read_bytes()
        except OSError as err:
            raise FeedError(f"{self.path}: cannot read: {err.strerror or err}") from err
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        if digest == self._digest and cache.state.snapshot is not None:
            cache.confirm(now)
            return RefreshOutcome.NOT_MODIFIED
        snapshot = parse_feed(raw, str(self.path))
        cache.accept(snapshot, now)
        self._digest = digest
        return RefreshOutcome.SUCCESS
