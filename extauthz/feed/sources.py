"""What every feed source offers the server, whatever it reads from.

A *polled* source (file, HTTP) is asked to refresh on a timer and answers with an outcome.
A *streamed* source (gRPC ``Watch``) runs on its own and reports each outcome as it
happens. Both write only whole snapshots into the ``FeedCache`` and raise or report
``FeedError`` with the cache untouched, so the last good feed keeps serving.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Protocol, runtime_checkable

from extauthz.errors import FeedError
from extauthz.feed.cache import FeedCache


class RefreshOutcome(StrEnum):
    SUCCESS = "success"
    NOT_MODIFIED = "not_modified"
    ERROR = "error"


@runtime_checkable
class PolledFeedSource(Protocol):
    def refresh(self, cache: FeedCache, now: float) -> RefreshOutcome:
        """Bring ``cache`` up to date. Raises FeedError; the cache is then untouched.
        Blocking: the server calls it from a worker thread."""
        ...


# Called by a streamed source after each change: the outcome, and the error for ERROR.
FeedReport = Callable[[RefreshOutcome, FeedError | None], None]


@runtime_checkable
class StreamedFeedSource(Protocol):
    async def run(self, cache: FeedCache, report: FeedReport, clock: Callable[[], float]) -> None:
        """Keep ``cache`` current until cancelled, reconnecting as needed; never returns
        on its own and never raises but CancelledError."""
        ...
