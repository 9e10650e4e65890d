"""A feed read from a local JSON file, re-read when the file changes."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from extauthz.errors import FeedError
from extauthz.feed.cache import FeedCache
from extauthz.feed.snapshot import parse_feed

# A feed this large is a mistake or an attack; refuse it rather than exhaust memory.
MAX_FEED_BYTES = 512 * 1024 * 1024


class RefreshOutcome(StrEnum):
    SUCCESS = "success"
    NOT_MODIFIED = "not_modified"
    ERROR = "error"


class FileFeedSource:
    """Polls one file. Unchanged (same inode, size and mtime) confirms the current snapshot;
    changed is parsed and validated whole before it replaces the current one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None

    def refresh(self, cache: FeedCache, now: float) -> RefreshOutcome:
        """Refresh ``cache`` from the file. Raises FeedError; the cache is then untouched."""
        try:
            stat = os.stat(self.path)
        except OSError as err:
            raise FeedError(f"{self.path}: cannot read: {err.strerror or err}") from err
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if signature == self._signature and cache.state.snapshot is not None:
            cache.confirm(now)
            return RefreshOutcome.NOT_MODIFIED
        if stat.st_size > MAX_FEED_BYTES:
            raise FeedError(f"{self.path}: {stat.st_size} bytes is over {MAX_FEED_BYTES}")
        try:
            raw = self.path.read_bytes()
        except OSError as err:
            raise FeedError(f"{self.path}: cannot read: {err.strerror or err}") from err
        snapshot = parse_feed(raw, str(self.path))
        cache.accept(snapshot, now)
        self._signature = signature
        return RefreshOutcome.SUCCESS
